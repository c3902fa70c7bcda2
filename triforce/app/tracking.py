"""Experiment tracking: Weights & Biases, or nothing.

W&B mode (docs/DESIGN.md §9): WANDB_MODE in the environment wins; otherwise `logger.mode: auto` is
online when an account is configured (WANDB_API_KEY, or a ~/.netrc entry for the W&B host) and
offline when not — with no mode and no key wandb would raise at once. An online run that cannot
start (no network) falls back to offline, so a run never hangs or fails for lack of network.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any, Mapping, Protocol
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
_ENV_ALIASES = {"dryrun": "offline", "run": "online"}


class Tracker(Protocol):
    def log_sample(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def log_rounds(self, rounds) -> None: ...

    def finish(self, *, summary: Mapping[str, Any], table=None, failed: bool) -> None: ...


class NullTracker:
    def log_sample(self, step, metrics) -> None:
        pass


    def log_rounds(self, rounds) -> None:
        pass

    def finish(self, *, summary, table=None, failed) -> None:
        pass


def has_credentials(environ: Mapping[str, str], netrc_file: Path | None = None) -> bool:
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = netrc_file or Path(environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return bool(netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str, environ: Mapping[str, str], netrc_file: Path | None = None) -> str:
    """online | offline | disabled, from logger.mode, WANDB_MODE and the configured credentials."""
    from triforce.errors import ConfigError

    env = environ.get("WANDB_MODE", "").strip().lower()
    if env:
        env = _ENV_ALIASES.get(env, env)
        if env not in MODES[1:]:
            raise ConfigError(f"WANDB_MODE={env!r}: choose online, offline or disabled")
        requested = env
    if requested not in MODES:
        raise ConfigError(f"logger.mode={requested!r}: choose one of {', '.join(MODES)}")
    if requested in ("auto", "online"):
        if has_credentials(environ, netrc_file):
            return "online"
        if requested == "online":
            log.warning("W&B online mode asked for but no account is configured (WANDB_API_KEY or "
                        "~/.netrc): logging offline; upload later with `wandb sync`")
        return "offline"
    return requested


class WandbTracker:
    def __init__(self, run, *, log_table: bool):
        self.run, self.log_table = run, log_table

    def log_sample(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def log_rounds(self, rounds) -> None:
        """Acceptance and latency of every top-level step, as a table (sample, step, emitted,
        accepted/<level>, proposed/<level>, ms): steps of all samples, plottable in W&B."""
        import wandb

        if self.log_table and len(rounds):
            self.run.log({"rounds": wandb.Table(dataframe=rounds)})

    def finish(self, *, summary: Mapping[str, Any], table=None, failed: bool) -> None:
        import wandb

        try:
            self.run.summary.update({k: v for k, v in summary.items() if v is not None})
            if table is not None and self.log_table and len(table):
                self.run.log({"samples": wandb.Table(dataframe=table)})
        finally:
            self.run.finish(exit_code=1 if failed else 0)


def open_tracker(logger: Mapping[str, Any], *, config: Mapping, run_dir: Path, name: str,
                 group: str | None, job_type: str, tags: list[str]) -> Tracker:
    if logger.get("name", "none") == "none":
        return NullTracker()
    mode = resolve_mode(logger.get("mode", "auto"), os.environ)
    if mode == "disabled":
        return NullTracker()
    import wandb

    kwargs = dict(project=logger.get("project") or "triforce", entity=logger.get("entity"),
                  group=logger.get("group") or group, job_type=job_type, name=name, tags=list(tags),
                  config=dict(config), dir=str(run_dir))
    settings = dict(console="off", silent=True, save_code=False, disable_git=True,
                    init_timeout=float(logger.get("init_timeout", 60)))
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **kwargs)
    except Exception as e:
        if mode != "online":
            raise
        log.warning("W&B online run could not start (%s: %s); logging offline instead", type(e).__name__, e)
        run = wandb.init(mode="offline", settings=wandb.Settings(**settings), **kwargs)
    return WandbTracker(run, log_table=bool(logger.get("log_samples_table", True)))
