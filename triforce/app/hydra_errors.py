"""Hydra's override and composition errors in the app's form: one line that names the bad key and
what exists instead (a group's options, a node's keys).

Hydra reports them its own way (6-19 lines, exit code 1, no `error:` line). The CLI has Hydra raise
them instead (HYDRA_FULL_ERROR) and prints `describe`'s line, exit code 2, as for every other bad
input (triforce/cli.py).
"""

from __future__ import annotations

import re
from typing import Sequence

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"


def describe(e: BaseException, overrides: Sequence[str] = ()) -> str | None:
    """One line for an error Hydra raised while parsing the overrides or composing the config (None
    for anything else: a bug keeps its traceback). `overrides`: the command line's, to quote the
    one at fault as the user typed it."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(e, MissingConfigException) and e.options is not None and "/" in (e.missing_cfg_file or ""):
        return _missing_option(e)
    if isinstance(e, OverrideParseException):
        return (f"{e.override}: not an override Hydra can parse ({_first_line(e.message)}); overrides are key=value, "
                f"group=option, +key=value or ~key ({GRAMMAR})")
    if isinstance(e, HydraException):
        cause = e.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
            return _missing_key(e, cause, overrides)
        return _flat(e)
    if isinstance(e, OmegaConfBaseException):  # e.g. a hydra.* interpolation that does not resolve
        return _flat(e)
    return None


def _missing_option(e) -> str:
    group, name = e.missing_cfg_file.rsplit("/", 1)
    where = re.match(r"In '([^']+)'", str(e))
    asked_in = f" (asked for in {where.group(1)})" if where and where.group(1) not in ("config", "hydra/config") else ""
    return f"{group}={name}: {group} has no option {name!r}{asked_in}; choose one of {', '.join(e.options)}"


def _missing_key(e, cause, overrides: Sequence[str]) -> str:
    """`foo=1`, `hardware.kernels.bogus=1`: a key the config does not have, and the keys its node has."""
    said = re.match(r"Could not override '([^']+)'", str(e))
    key_path = said.group(1) if said else cause.full_key
    typed = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key_path), key_path)
    parent, _, key = cause.full_key.rpartition(".")
    node = getattr(cause, "parent_node", None)
    keys = [str(k) for k in (node.keys() if node is not None and hasattr(node, "keys") else [])]
    add = f"use +{typed.lstrip('+')} only for a key the run reads"
    if not parent:
        groups = config_groups()
        values = [k for k in keys if k not in groups and k != "hydra"]
        return (f"{typed}: the config has no key {key!r}; its keys are {', '.join(values)}, and the groups "
                f"{', '.join(groups)} (group=option); {add}")
    listed = f"; its keys are {', '.join(keys)}" if keys else ""
    return f"{typed}: {parent} has no key {key!r}{listed}; {add}"


def config_groups() -> list[str]:
    """The app's config groups (the folders of triforce/conf; Hydra's own `hydra` aside)."""
    from importlib.resources import files

    return sorted(p.name for p in files("triforce.conf").iterdir()
                  if p.is_dir() and p.name not in ("hydra", "__pycache__"))


def _flat(e: BaseException) -> str:
    """Hydra's own message on one line (its search-path listing left out)."""
    text = str(e).split("Config search path:", 1)[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0]
