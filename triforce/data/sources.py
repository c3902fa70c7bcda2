"""Dataset name -> prompt samples. `dataset.name` picks the loader; the rest of `dataset` configures it."""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, Mapping

from triforce.data.prompts import Sample, book_prompt, require_length
from triforce.data.tokenizers import Tokenizer
from triforce.errors import ConfigError


def gutenberg_samples(cfg: Mapping, tokenizer: Tokenizer) -> Iterator[Sample]:
    """Offline default: Project Gutenberg books from the asset cache (or `folder`), each cut to `prefill` tokens."""
    from pathlib import Path

    from triforce.data.gutenberg import load_books

    folder = cfg.get("folder")
    try:
        books = load_books(Path(folder).expanduser() if folder else None, cfg.get("books"))
    except ValueError as e:
        raise ConfigError(f"dataset.books: {e}") from None
    if not books:
        raise ConfigError(f"no Gutenberg books (*_gut.txt) in {folder or 'the asset cache'}")
    for book in itertools.islice(books, cfg.get("num_samples")):
        yield Sample(id=book.name, title=book.name, prompt_ids=book_prompt(tokenizer, book.text, cfg["prefill"]))


def _pg19(cfg, tokenizer):
    from triforce.data.pg19 import pg19_samples

    return pg19_samples(cfg, tokenizer)


def _narrativeqa(cfg, tokenizer):
    from triforce.data.narrativeqa import narrativeqa_samples

    return narrativeqa_samples(cfg, tokenizer)


LOADERS: Mapping[str, Callable[[Mapping, Tokenizer], Iterator[Sample]]] = {
    "gutenberg": gutenberg_samples, "pg19": _pg19, "narrativeqa": _narrativeqa}


def check_dataset(cfg: Mapping) -> None:
    """Cheap checks of a dataset config (no files read)."""
    name = cfg.get("name")
    if name not in LOADERS:
        raise ConfigError(f"dataset.name={name!r} is unknown; choose one of {', '.join(LOADERS)}")
    prefill = cfg.get("prefill")
    if not isinstance(prefill, int) or prefill <= 0:
        raise ConfigError(f"dataset.prefill={prefill!r} must be a positive number of prompt tokens")
    n = cfg.get("num_samples")
    if n is not None and (not isinstance(n, int) or n <= 0):
        raise ConfigError(f"dataset.num_samples={n!r} must be a positive integer or null (all)")
    template = cfg.get("chat_template")
    if template not in (None, "auto", "lwm"):
        raise ConfigError(f"dataset.chat_template={template}: auto (the model's own chat template where its "
                          "tokenizer has one, else the LWM prompt) or lwm")


def load_samples(cfg: Mapping, tokenizer: Tokenizer) -> list[Sample]:
    check_dataset(cfg)
    samples = [require_length(s, cfg["prefill"], allow_short=cfg.get("allow_short", False))
               for s in LOADERS[cfg["name"]](cfg, tokenizer)]
    if not samples:
        raise ConfigError(f"dataset {cfg['name']!r} yielded no samples; check dataset.split / num_samples")
    return samples
