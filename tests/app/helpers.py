"""Helpers for the app tests: composed configs, a tiny offline book folder, CLI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BOOK = """The Project Gutenberg EBook of A Tiny Test Book

*** START OF THIS PROJECT GUTENBERG EBOOK A TINY TEST BOOK ***

{body}

*** END OF THIS PROJECT GUTENBERG EBOOK A TINY TEST BOOK ***
licence text that PG-19 strips
"""


def write_books(folder: Path, n: int = 2, chars: int = 6000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = " ".join(f"Chapter {i}: the sea was calm and word {j} followed word {j - 1}."
                        for j in range(chars // 50))
        (folder / f"book_{i}_gut.txt").write_text(BOOK.format(body=body))
    return folder


def compose(*overrides: str, hydra_cfg: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="triforce.conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def tiny_overrides(books: Path, *extra: str) -> list[str]:
    """A seconds-long run: tiny random model, byte tokenizer, a 128-token prompt from the test books.
    `extra` overrides replace the defaults with the same key."""
    base = ["model=tiny", "draft=self", "method=triforce", "method.budget=32", "method.gamma=4",
            "dataset=gutenberg", f"dataset.folder={books}", "dataset.prefill=128", "max_new_tokens=8",
            "logger=none"]
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(extra)


def cli_env(tmp: Path) -> dict[str, str]:
    """No W&B account and no W&B mode: the app must choose offline by itself. Progress bars as on
    any non-terminal unless a test forces them (TRIFORCE_PROGRESS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRIFORCE_PROGRESS"))}
    env.update(NETRC=str(tmp / "no-netrc"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp / "wandb-cache"), WANDB_DATA_DIR=str(tmp / "wandb-data"))
    return env


def run_cli(args: list[str], tmp: Path, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The `triforce` console script of this environment (python -m triforce.cli if absent);
    `env`: variables added to cli_env."""
    script = Path(sys.executable).with_name("triforce")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "triforce.cli"]
    return subprocess.run(cmd + args, cwd=tmp, env={**cli_env(tmp), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no stdout"
    return json.loads(lines[-1])
