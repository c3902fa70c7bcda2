"""Run folders that no two runs share, however they are started.

Hydra names a run's folder by the second it started (outputs/runs/<date>/<HH-MM-SS>) and creates
it with `exist_ok=True`: two runs started in the same second wrote into one folder, each
overwriting some of the other's files. `${triforce.unique_dir:<path>}` (conf/config.yaml) claims
the folder with one `mkdir`, which the file system grants to one process only, and moves on to
`<path>-1`, `<path>-2`, ... for the others. The resolver caches its value (as Hydra's `now` does):
a run resolves its folder once, and a sweep's jobs share the sweep's.
"""

from __future__ import annotations

import os

RESOLVER = "triforce.unique_dir"


def claim_dir(base: str) -> str:
    """The first of `base`, `base-1`, `base-2`, ... that did not exist, now created (atomically)."""
    parent = os.path.dirname(base)
    if parent:
        os.makedirs(parent, exist_ok=True)
    candidate, n = base, 0
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{base}-{n}"


def register_resolver() -> None:
    """Before Hydra composes the app's config (the CLI does it at import)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, claim_dir, use_cache=True)
