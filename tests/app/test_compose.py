"""Every config option and every experiment preset composes and passes start-time validation
(without loading weights), the offloading and tensor-parallel ones included."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import triforce.conf
from triforce.app.validate import validate
from tests.app.helpers import compose

CONF = Path(triforce.conf.__file__).parent
GROUPS = ("model", "draft", "dataset", "hardware", "method", "sampling", "logger", "prompt")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(*overrides), resolve=True)


def test_root_conf_is_the_package_conf():
    root = Path(triforce.conf.__file__).parents[2] / "conf"
    assert root.resolve() == CONF.resolve()


def test_default_config():
    cfg = resolved()
    assert cfg["model"]["name"] == "smollm2-135m"
    assert cfg["dataset"]["name"] == "gutenberg"
    assert cfg["method"]["name"] == "triforce" and cfg["draft"]["name"] == "self"
    assert cfg["hardware"]["device"] == "cpu" and cfg["logger"]["name"] == "wandb"
    plan = validate(cfg, environment=False)
    assert plan.method.budget == cfg["method"]["budget"]
    # the acceptance study's choice (docs/RESULTS.md); the engine's own default stays the paper's
    assert plan.method.middle_cache == "hybrid" == resolved("method=retrieval_spec")["method"]["middle_cache"]


def test_paper_presets_keep_the_papers_retrieval_cache():
    for preset in ("a100_triforce", "a100_retrieval_spec", "a100_lwm_chat_narrativeqa", "rtx4090_offload_triforce",
                   "2x4090_offload_tp_triforce"):
        assert resolved(f"experiment={preset}")["method"]["middle_cache"] == "retrieval", preset


def test_hydra_dirs_are_under_outputs():
    hc = compose(hydra_cfg=True).hydra
    dirs = OmegaConf.to_container(hc, resolve=False)  # resolving would claim the folders (rundirs.py)
    assert dirs["run"]["dir"].startswith("${triforce.unique_dir:outputs/runs/")
    assert dirs["sweep"]["dir"].startswith("${triforce.unique_dir:outputs/multirun/")
    assert "triforce.app.callbacks.AggregateSweep" in OmegaConf.to_yaml(hc.callbacks)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "draft" and option == "none":
        overrides.append("method=retrieval_spec")
    if group == "method" and option == "autoregressive":
        overrides.append("draft=none")
    validate(resolved(*overrides), environment=False)


def test_every_group_has_its_documented_options():
    assert {"llama2-7b-128k", "llama2-13b-128k", "lwm-text-128k", "lwm-text-chat-128k", "smollm2", "tiny",
            "smollm2_yarn32k"} <= set(options("model"))
    assert {"llama-68m", "self", "none"} <= set(options("draft"))
    assert {"pg19", "pg19_full", "narrativeqa", "gutenberg"} <= set(options("dataset"))
    assert {"cpu", "a100", "h100", "rtx4090_offload", "2x4090_offload_tp"} <= set(options("hardware"))
    assert {"autoregressive", "spec", "retrieval_spec", "triforce"} <= set(options("method"))
    assert {"wandb", "wandb_online", "none"} <= set(options("logger"))
    assert {"4k", "8k", "32k"} <= set(options("prompt"))


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_experiment_preset_composes_and_validates(preset):
    validate(resolved(f"experiment={preset}"), environment=False)


def test_a100_preset_reproduces_the_readme_command():
    cfg = resolved("experiment=a100_triforce")
    assert cfg["model"]["name"] == "NousResearch/Yarn-Llama-2-7b-128k"
    assert cfg["draft"]["name"] == "JackFram/llama-68m"
    assert cfg["dataset"]["name"] == "pg19" and cfg["dataset"]["num_samples"] == 20
    assert cfg["dataset"]["prefill"] == 124928
    m = cfg["method"]
    assert (m["budget"], m["chunk_size"], m["gamma"], m["draft_sink"] + m["draft_window"]) == (4096, 8, 6, 256)
    assert (cfg["sampling"]["temperature"], cfg["sampling"]["top_p"]) == (0.6, 0.9)


def test_offloading_presets_carry_the_paper_values():
    tp = resolved("experiment=2x4090_offload_tp_triforce")
    assert (tp["dataset"]["prefill"], tp["method"]["budget"], tp["method"]["gamma"]) == (130048, 12288, 16)
    assert (tp["hardware"]["on_chip_layers"], tp["hardware"]["tensor_parallel"]) == (9, 2)
    one = resolved("experiment=rtx4090_offload_triforce")
    assert (one["method"]["budget"], one["method"]["gamma"], one["hardware"]["offload"]) == (8192, 12, True)


@pytest.mark.parametrize("prompt,prefill,yarn", [("4k", 4096, False), ("8k", 8000, False), ("32k", 32000, True)])
def test_acceptance_study_prompt_lengths_bring_the_model_they_need(prompt, prefill, yarn):
    """The study's one sweep command spans prompt=4k,8k,32k: each sets the prompt length and, for
    32K, SmolLM2 with YaRN — over the preset, whose other settings stay (budget as a fraction)."""
    cfg = resolved("experiment=acceptance_study", f"prompt={prompt}")
    assert cfg["dataset"]["prefill"] == prefill and cfg["model"]["name"] == "smollm2-135m"
    assert (cfg["model"]["rope_scaling"] is not None) == yarn
    m = cfg["method"]
    assert (m["name"], m["budget"], m["budget_fraction"]) == ("retrieval_spec", None, 0.125)
    assert m["middle_cache"] == "hybrid"
    assert cfg["baseline"] and cfg["reference_acceptance"] and cfg["max_new_tokens"] == 128
    plan = validate(cfg, environment=False)
    assert plan.method.for_prompt(prefill).budget == round(prefill / 8)


def test_presets_list_only_deltas():
    for path in (CONF / "experiment").glob("*.yaml"):
        text = path.read_text()
        assert text.lstrip().startswith("# @package _global_"), path.name


def test_unknown_group_option_is_rejected_at_compose_with_the_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose("dataset=nope")
    assert "nope" in str(err.value) and "gutenberg" in str(err.value)
    with pytest.raises(MissingConfigException):
        compose("model=nope")


def test_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    hc = compose("hydra/launcher=slurm", hydra_cfg=True).hydra
    assert "SlurmLauncher" in hc.launcher._target_
    assert hc.launcher.gpus_per_node == 1 and hc.launcher.timeout_min > 0
