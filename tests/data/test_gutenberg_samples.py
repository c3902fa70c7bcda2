"""The offline default dataset: Gutenberg books (header stripped) cut to `prefill` tokens."""

from __future__ import annotations

import pytest

from triforce.data.sources import check_dataset, load_samples
from triforce.data.tokenizers import ByteTokenizer
from triforce.errors import ConfigError
from tests.app.helpers import write_books


def test_books_from_a_folder(tmp_path):
    folder = write_books(tmp_path / "books", n=3)
    cfg = {"name": "gutenberg", "folder": str(folder), "books": None, "num_samples": 2, "prefill": 300}
    samples = load_samples(cfg, ByteTokenizer())
    assert [s.id for s in samples] == ["book_0_gut", "book_1_gut"]
    assert all(len(s.prompt_ids) == 300 for s in samples)
    assert "PROJECT GUTENBERG" not in ByteTokenizer().decode(samples[0].prompt_ids)


def test_named_books_and_unknown_names(tmp_path):
    folder = write_books(tmp_path / "books", n=3)
    cfg = {"name": "gutenberg", "folder": str(folder), "books": ["book_2_gut"], "num_samples": None, "prefill": 50}
    assert [s.id for s in load_samples(cfg, ByteTokenizer())] == ["book_2_gut"]
    with pytest.raises(ConfigError, match="unknown Gutenberg books \\['nope'\\]"):
        load_samples({**cfg, "books": ["nope"]}, ByteTokenizer())


def test_cached_books_with_the_real_tokenizer(gutenberg_dir, smollm2_dir):
    from triforce.data.tokenizers import load_text_tokenizer

    cfg = {"name": "gutenberg", "folder": None, "books": None, "num_samples": 2, "prefill": 2048}
    samples = load_samples(cfg, load_text_tokenizer("smollm2-135m"))
    assert len(samples) == 2 and all(len(s.prompt_ids) == 2048 for s in samples)


@pytest.mark.parametrize("cfg,pattern", [
    ({"name": "nope", "prefill": 10}, "dataset.name='nope' is unknown"),
    ({"name": "gutenberg", "prefill": -1}, "dataset.prefill=-1"),
    ({"name": "gutenberg", "prefill": 10, "num_samples": 0}, "dataset.num_samples=0"),
])
def test_check_dataset(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_dataset(cfg)
