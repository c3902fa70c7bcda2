"""Where a model's files are: an alias of the offline assets, a local folder, or a Hugging Face id
(its snapshot in the local cache, downloaded if allowed), and which of its files are the weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

from triforce.errors import ModelNotFoundError

# Short names for the offline default, resolved through the asset cache.
LOCAL_ALIASES = {"smollm2-135m": "smollm2"}

# The first line of a Git LFS pointer: what a clone without git-lfs leaves in place of a large file
LFS_POINTER = b"version https://git-lfs.github.com/spec"


def resolve_model_dir(name_or_path: str, *, download: bool = True) -> Path:
    """Local folder holding config.json and the weights for a path, alias or HF hub id."""
    if name_or_path in LOCAL_ALIASES:
        from triforce import assets

        return assets.model_dir(LOCAL_ALIASES[name_or_path])
    path = Path(os.path.expanduser(name_or_path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: point model.name at a folder "
                                     "holding a Hugging Face checkpoint (config.json + weights)")
        return path
    if name_or_path.count("/") != 1 or name_or_path.startswith(("/", ".", "~")):
        raise ModelNotFoundError(
            f"unknown model {name_or_path!r}: not a local folder, not a known alias "
            f"({', '.join(LOCAL_ALIASES)}) and not a Hugging Face id of the form owner/name")
    return _hub_snapshot(name_or_path, download=download)


def hf_download(repo_id: str) -> str:
    """The download command of huggingface_hub >= 1.0 (`hf`; `huggingface-cli` is gone)."""
    return f"hf download {repo_id} --local-dir {repo_id.rsplit('/', 1)[-1]}"


def _hub_snapshot(repo_id: str, *, download: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
    try:
        cached = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if weight_files(cached):  # a snapshot holding only config.json is not a usable checkpoint
            return cached
        raise FileNotFoundError(cached)
    except Exception:
        if not download:
            raise ModelNotFoundError(
                f"{repo_id} is not in the local Hugging Face cache; download it with "
                f"`{hf_download(repo_id)}` and pass that folder") from None
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise ModelNotFoundError(
            f"could not download {repo_id} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); download it where the hub is reachable with "
            f"`{hf_download(repo_id)}` and copy the folder here, then pass its path") from None
    if not weight_files(path):
        # some repos ship only .bin shards: fetch those as a fallback
        path = Path(snapshot_download(repo_id, allow_patterns=patterns + ["*.bin"]))
    return path


def weight_files(model_dir: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = model_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [model_dir / s for s in shards]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(model_dir.glob(pattern))
        if files:
            return files
    return []
