"""Test-only: a `triforce` process started with this folder on PYTHONPATH reports every weight file
it reads, as a line `[weight-watch] read PATH` on stderr (tests/app/helpers.run_cli(watch_weights=True)).

Python imports `sitecustomize` at start-up. This one wraps triforce.models.checkpoint.read_weight_file
(the one function that reads a checkpoint's tensors) as that module is imported, before
triforce.models.loading binds it, so a CLI test sees whether weights were read before an `error:`
or `warning:` line, and in which order. Nothing heavy is imported here: the CLI's start stays as it is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

MODULE = "triforce.models.checkpoint"
MARK = "[weight-watch] read "


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        read = module.read_weight_file

        def reported(path, *args, **kwargs):
            print(f"{MARK}{path}", file=sys.stderr, flush=True)
            return read(path, *args, **kwargs)

        module.read_weight_file = reported

    def __getattr__(self, name):  # get_source, get_code, ...: the file loader's own
        return getattr(self.inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
