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


# -- the BOS a Llama-family model was trained with ---------------------------------------------------

def bos_cases(paper_models, tmp_path) -> dict:
    """name -> (tokenizer folder, the model whose config.json names the BOS)."""
    from tests.paper_models import as_llama30_tokenizer

    no_config = without_tokenizer(paper_models["yarn-llama-2-7b-128k"], tmp_path / "yarn")
    shutil.copy(paper_models["yarn-llama-2-7b-128k"] / "tokenizer.model", no_config / "tokenizer.model")
    sp_only = tmp_path / "sp-only"  # model.tokenizer pointing at a folder of tokenizer.model alone
    sp_only.mkdir()
    shutil.copy(paper_models["lwm-text-128k"] / "tokenizer.model", sp_only / "tokenizer.model")
    llama30 = shutil.copytree(paper_models["llama-3.1-8b-instruct"], tmp_path / "llama30")
    as_llama30_tokenizer(llama30)
    return {"llama-2 without tokenizer_config.json": (no_config, no_config),
            "model.tokenizer: a tokenizer.model alone": (sp_only, paper_models["lwm-text-128k"]),
            "llama 3.0 tokenizer.json": (llama30, llama30)}


@pytest.mark.parametrize("case", ["llama-2 without tokenizer_config.json", "model.tokenizer: a tokenizer.model alone",
                                  "llama 3.0 tokenizer.json"])
def test_a_tokenizer_that_leaves_out_the_models_bos_gets_it_added_with_a_warning(paper_models, tmp_path, case):
    from triforce.data.prompts import book_prompt, chat_prompt
    from triforce.data.tokenizers import with_model_bos
    from triforce.models.loading import load_config

    folder, model = bos_cases(paper_models, tmp_path)[case]
    bos = load_config(model).bos_token_id
    plain = load_tokenizer(str(folder))
    assert plain.encode("Once upon a time")[0] != bos  # what the run got before: no BOS
    tok, warning = with_model_bos(plain, bos, str(folder))
    token = plain.convert_ids_to_tokens(bos)
    assert warning.startswith(f"the tokenizer of {folder} leaves out {token} (id {bos}), the BOS token the model's "
                              "config.json names") and "\n" not in warning
    text = "Once upon a time there was a book. " * 20
    assert book_prompt(tok, text, 32) == [bos, *plain.encode(text)[:31]]
    assert chat_prompt(tok, text, 64, prefix="USER: ", suffix=" ASSISTANT:")[0] == bos
    assert tok.decode(tok.encode("Once upon a time", add_special_tokens=False)) == "Once upon a time"


@pytest.mark.parametrize("name", ["yarn-llama-2-7b-128k", "llama-68m", "llama-3.1-8b-instruct", "smollm2"])
def test_tokenizers_as_shipped_are_left_as_they_are(paper_models, smollm2_dir, name):
    """The checkpoints' own tokenizer files start prompts with their BOS already; SmolLM2's config
    names <|im_start|>, a chat-turn token it was not trained to start texts with: no BOS added."""
    from triforce.data.tokenizers import with_model_bos
    from triforce.models.loading import load_config

    folder = smollm2_dir if name == "smollm2" else paper_models[name]
    plain = load_tokenizer(str(folder))
    tok, warning = with_model_bos(plain, load_config(folder).bos_token_id, str(folder))
    assert tok is plain and warning is None
