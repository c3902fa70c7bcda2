"""The benchmarks' configurations (triforce/conf/*_benchmark.yaml and their presets) compose, and every
method they name is a valid method configuration — checked here, before a GPU run would find out."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from triforce.config import method_config

CONF = Path(__file__).resolve().parents[1] / "triforce" / "conf"
BENCHMARKS = ("batch_benchmark", "batch_trees", "adaptive_benchmark", "latency_benchmark", "offload_benchmark")


def _methods(cfg) -> dict:
    """Every method a benchmark's config names (MethodConfig fields by label)."""
    found = {key: cfg[key] for key in ("method", "magicdec", "auto", "tree_method") if key in cfg}
    found.update(cfg.get("fixed") or {})
    if OmegaConf.is_dict(cfg.get("end_to_end")):
        found.update(cfg.end_to_end.get("methods") or {})
    return {k: OmegaConf.to_container(v) for k, v in found.items()}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_a_benchmark_config_composes_and_names_valid_methods(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name)
    methods = _methods(cfg)
    for label, values in methods.items():
        method_config(values)  # a ConfigError names the field
    if name == "batch_trees":  # the preset: chains and trees side by side, one batch
        trees = {label: m["tree"] for label, m in methods.items() if m.get("tree")}
        chains = {label for label, m in methods.items() if m.get("name") == "spec" and not m.get("tree")}
        assert trees and chains and list(cfg.end_to_end.batch_sizes) == list(cfg.batch_sizes) == [8]
        assert [8] in trees.values()  # a wide, shallow tree beside the deep ones
