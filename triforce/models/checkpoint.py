"""Read the weight files of a checkpoint folder, with a clear error for a file that is broken.

A download that was interrupted, a Git LFS pointer left by a clone without git-lfs, or an HTML
error page saved under a weight file's name all end, unchecked, as a traceback from deep inside
safetensors or torch.load. Every file is checked cheaply (its size against what its header
declares; a zip archive's directory) before any is read, so a broken last shard of a 7B
checkpoint is reported before minutes go into reading the first ones.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import torch

from triforce.errors import CorruptCheckpointError
from triforce.models.folders import LFS_POINTER


def _redownload(path: Path) -> str:
    """How to fetch that one file again: the repo id is known when the folder is in the hub cache;
    a folder of its own says nothing of where it came from, so the command names what to fill in."""
    folder = path.parent
    repo = next((p[len("models--"):].replace("--", "/", 1) for p in reversed(folder.parts)
                 if p.startswith("models--")), None)
    if repo is None:
        return (f"download it again from the repository this folder was downloaded from: "
                f"`hf download <its Hugging Face id> {path.name} --local-dir {folder}`")
    return f"download it again: `hf download {repo} {path.name} --local-dir {folder}`"


def _broken(path: Path, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"weight file {path} {why}; {_redownload(path)}")


def _not_weights(path: Path, head: bytes) -> CorruptCheckpointError | None:
    if head.startswith(LFS_POINTER):
        return CorruptCheckpointError(f"weight file {path} is a Git LFS pointer, not the weights (the folder was "
                                      f"cloned without git-lfs): run `git lfs pull` there, or {_redownload(path)}")
    if head.lstrip().lower().startswith((b"<!doctype", b"<html")):
        return _broken(path, "is an HTML page, not weights (a failed download saved under its name)")
    return None


def check_safetensors(path: Path) -> None:
    """The 8-byte header length, the JSON header, and the file holding every tensor it lists."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        bad = _not_weights(path, head + f.read(64))
        if bad:
            raise bad
        if len(head) < 8:
            raise _broken(path, f"is truncated ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            raise _broken(path, f"is truncated: its header alone declares {8 + header_len} bytes, the file has {size}")
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            raise _broken(path, "is corrupt: its header is not a safetensors header") from None
    if 8 + header_len + end > size:
        raise _broken(path, f"is truncated: its tensors need {8 + header_len + end} bytes, the file has {size}")


def check_torch_bin(path: Path) -> None:
    """A `.bin` of torch >= 1.6 is a zip archive whose directory sits at its end: a cut file has none."""
    with open(path, "rb") as f:
        head = f.read(64)
    bad = _not_weights(path, head)
    if bad:
        raise bad
    if zipfile.is_zipfile(path):
        return
    if head.startswith(b"PK\x03\x04"):
        raise _broken(path, f"is truncated: the zip archive has no directory at its end ({path.stat().st_size} bytes)")
    if not head.startswith(b"\x80"):  # nor the legacy pickle format of older torch: torch.load would fail
        raise _broken(path, "is corrupt: neither a zip archive nor a pickle")


def check_weight_file(path: Path) -> None:
    if path.suffix == ".safetensors":
        check_safetensors(path)
    else:
        check_torch_bin(path)


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one file; a file the checks let through but the reader rejects is still one error line."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - SafetensorError, RuntimeError, UnpicklingError, ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise _broken(path, f"could not be read ({type(e).__name__}: {first})") from None
