"""A model's tokenizer: which files a folder holds, checked before anything loads, and loading it
through transformers with errors that say what to do.

The Llama-2-family checkpoints of the paper (Yarn-Llama-2, LWM, llama-68m) ship only a
sentencepiece `tokenizer.model`; transformers converts it to a fast tokenizer, which needs the
`sentencepiece` and `protobuf` packages. Without them transformers guesses the file is a tiktoken
model and fails deep inside its converter, so the packages are checked here first.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from triforce.config import TINY_MODEL
from triforce.errors import TokenizerError
from triforce.models.folders import LFS_POINTER, resolve_model_dir

ACCEPTS = ("model.tokenizer takes a folder or Hugging Face id holding the model's tokenizer files "
           "(tokenizer.json, or tokenizer.model + tokenizer_config.json), an alias (smollm2-135m), or "
           "`bytes` (byte-level, for model=tiny)")

# what reading a `tokenizer.model` takes, by the kind of file it is
_PACKAGES = {"sentencepiece": ("sentencepiece", "google.protobuf"), "tiktoken": ("tiktoken",)}
_PIP_NAMES = {"google.protobuf": "protobuf"}
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+=* \d+$")


def tokenizer_dir(name_or_path: str, *, download: bool = True) -> Path:
    """The folder holding a tokenizer: a local folder as it is (no config.json needed), else the
    model folder of an alias or Hugging Face id (loading.resolve_model_dir)."""
    path = Path(os.path.expanduser(name_or_path))
    if path.is_dir():
        return path
    return resolve_model_dir(name_or_path, download=download)


def model_file_kind(path: Path) -> str:
    """`sentencepiece` (a protobuf), `tiktoken` (base64 token + rank per line) or `lfs-pointer`."""
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(LFS_POINTER):
        return "lfs-pointer"
    first = head.split(b"\n", 1)[0]
    return "tiktoken" if _TIKTOKEN_LINE.match(first) else "sentencepiece"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (google for google.protobuf) is absent
        return False


def tokenizer_problem(folder: Path) -> str | None:
    """Why transformers cannot load a tokenizer from `folder` here (None when it can try)."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if "tokenizer.json" in names:
        return None
    if "tokenizer.model" in names:
        kind = model_file_kind(folder / "tokenizer.model")
        if kind == "lfs-pointer":
            return (f"{folder / 'tokenizer.model'} is a Git LFS pointer, not the tokenizer (the folder was cloned "
                    f"without git-lfs): run `git lfs pull` there or download it with `hf download`")
        missing = [m for m in _PACKAGES[kind] if not _importable(m)]
        if missing:
            pip = " ".join(_PIP_NAMES.get(m, m) for m in missing)
            return (f"{folder / 'tokenizer.model'} is a {kind} tokenizer and reading it needs the Python "
                    f"package(s) {pip}: `pip install {pip}` (`make setup` installs them)")
        return None
    if {"vocab.json", "merges.txt"} <= names or "vocab.txt" in names or any(n.endswith(".tiktoken") for n in names):
        return None
    return f"{folder} has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json + merges.txt)"


def _error(name: str, explicit: bool, problem: str) -> TokenizerError:
    if explicit:
        return TokenizerError(f"model.tokenizer={name}: {problem}; {ACCEPTS}")
    return TokenizerError(f"{problem}: set model.tokenizer to where this model's tokenizer is; {ACCEPTS}")


def load_tokenizer(name_or_path: str, *, explicit: bool = True):
    """transformers' AutoTokenizer for a folder, alias or hub id; every failure is a TokenizerError.
    `explicit`: the name is model.tokenizer (else model.name, whose folder should hold one). The app
    loads the tokenizer first, before the prompts and any weights, so these errors come early."""
    if name_or_path == TINY_MODEL:
        raise TokenizerError(f"model.name={TINY_MODEL} has no tokenizer of its own: set model.tokenizer=bytes")
    folder = tokenizer_dir(name_or_path)
    problem = tokenizer_problem(folder)
    if problem:
        raise _error(name_or_path, explicit, problem)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all end the same way
        first = (str(e).strip().splitlines() or [""])[0][:300]
        problem = f"the tokenizer in {folder} does not load ({type(e).__name__}: {first})"
        raise _error(name_or_path, explicit, problem) from None
