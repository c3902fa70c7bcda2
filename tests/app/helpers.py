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


# tests/weight_watch/sitecustomize.py: on PYTHONPATH, the process reports each weight file it reads
WEIGHT_WATCH = Path(__file__).resolve().parents[1] / "weight_watch"
WEIGHT_READ = "[weight-watch] read "


def cli_command() -> list[str]:
    """The `triforce` console script of this environment (python -m triforce.cli if absent)."""
    script = Path(sys.executable).with_name("triforce")
    return [str(script)] if script.exists() else [sys.executable, "-m", "triforce.cli"]


def run_cli(args: list[str], tmp: Path, timeout: int = 300, env: dict[str, str] | None = None,
            watch_weights: bool = False) -> subprocess.CompletedProcess:
    """The CLI run as a user runs it; `env`: variables added to cli_env; `watch_weights`: stderr also
    gets a `[weight-watch] read PATH` line for each weight file read (weights_read, messages)."""
    env = {**cli_env(tmp), **(env or {})}
    if watch_weights:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(WEIGHT_WATCH), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cli_command() + args, cwd=tmp, env=env, capture_output=True, timeout=timeout)
    # decoded here, not with text=True: that would turn a progress bar's carriage returns into newlines
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def stderr_lines(stderr: str) -> list[str]:
    """stderr's lines as a log shows them: split at newlines only (a progress bar redraws its line
    with carriage returns, so a message that follows a bar without a newline stays on the bar's line)."""
    return stderr.split("\n")


def messages(stderr: str) -> list[str]:
    """The lines a user reads on stderr: not progress-bar redraws (lines with a carriage return), not
    the weight watch's lines, not blank."""
    return [line for line in stderr_lines(stderr) if line.strip() and "\r" not in line
            and not line.startswith(WEIGHT_READ)]


def weights_read(stderr: str) -> list[str]:
    """The weight files a run_cli(watch_weights=True) process read, in order."""
    return [line[len(WEIGHT_READ):] for line in stderr_lines(stderr) if line.startswith(WEIGHT_READ)]


def assert_one_error_before_any_weights(proc: subprocess.CompletedProcess, start: str) -> str:
    """Exit code 2, stderr exactly one `error:` line starting with `start`, no traceback, and no
    weight file read (the process ran with watch_weights=True). The line, for further checks."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert weights_read(proc.stderr) == [], proc.stderr[-3000:]
    lines = [line for line in stderr_lines(proc.stderr) if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "no stdout"
    return json.loads(lines[-1])
