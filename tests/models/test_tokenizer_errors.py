"""A model folder whose tokenizer cannot load says so in one TokenizerError naming model.tokenizer."""

from __future__ import annotations

import shutil

import pytest

from triforce.errors import TokenizerError
from triforce.models import tokenizer
from triforce.models.tokenizer import load_tokenizer

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def without_tokenizer(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    return dst


def test_folder_without_tokenizer_files_names_model_tokenizer(paper_models, tmp_path):
    folder = without_tokenizer(paper_models["yarn-llama-2-7b-128k"], tmp_path / "yarn")
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(str(folder), explicit=False)
    message = str(e.value)
    assert message.startswith(f"{folder} has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + "
                              "merges.txt): set model.tokenizer to where this model's tokenizer is; model.tokenizer "
                              "takes a folder or Hugging Face id holding the model's tokenizer files")
    assert "\n" not in message
    # model.tokenizer itself pointing at such a folder is named as such
    with pytest.raises(TokenizerError, match=rf"^model.tokenizer={folder}: {folder} has no tokenizer files"):
        load_tokenizer(str(folder))


def test_a_tokenizer_only_folder_serves_as_model_tokenizer(paper_models, tmp_path):
    """model.tokenizer may point at a folder of tokenizer files alone (no config.json, no weights)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(paper_models["llama-68m"] / name, folder / name)
    tok = load_tokenizer(str(folder))
    assert len(tok) == 1000 and tok("Hello").input_ids[0] == 1


@pytest.mark.parametrize("missing,pip", [({"sentencepiece"}, "sentencepiece"), ({"google.protobuf"}, "protobuf"),
                                         ({"sentencepiece", "google.protobuf"}, "sentencepiece protobuf")])
def test_sentencepiece_model_without_its_packages(paper_models, monkeypatch, missing, pip):
    """What a fresh install without the tokenizer dependencies meets (transformers would fall back to
    tiktoken and fail with `tiktoken is required to read a tiktoken file`)."""
    monkeypatch.setattr(tokenizer, "_importable", lambda module: module not in missing)
    folder = paper_models["lwm-text-chat-128k"]
    with pytest.raises(TokenizerError, match=rf"tokenizer.model is a sentencepiece tokenizer and reading it needs "
                                             rf"the Python package\(s\) {pip}: `pip install {pip}` \(`make setup`"):
        load_tokenizer(str(folder), explicit=False)


def test_the_tokenizer_dependencies_are_installed():
    assert tokenizer._importable("sentencepiece") and tokenizer._importable("google.protobuf")


def test_lfs_pointer_and_unreadable_tokenizer(paper_models, tmp_path):
    folder = shutil.copytree(paper_models["llama-68m"], tmp_path / "m")
    (folder / "tokenizer.model").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 499723\n")
    with pytest.raises(TokenizerError, match="tokenizer.model is a Git LFS pointer.*git lfs pull"):
        load_tokenizer(str(folder))
    (folder / "tokenizer.model").write_bytes(b"\x0a\x05broken protobuf")
    with pytest.raises(TokenizerError, match=rf"the tokenizer in {folder} does not load \(\w+"):
        load_tokenizer(str(folder))


def test_tiny_random_model_needs_the_byte_tokenizer():
    with pytest.raises(TokenizerError, match="model.tokenizer=bytes"):
        load_tokenizer("tiny-random", explicit=False)
