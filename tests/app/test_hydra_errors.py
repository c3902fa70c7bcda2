"""Hydra's override and composition errors in the app's form (triforce/app/hydra_errors.py): one
`error:` line naming the bad key and what exists instead, exit code 2, before anything loads."""

from __future__ import annotations

import pytest

from tests.app.helpers import assert_one_error_before_any_weights, compose, run_cli
from triforce.app.hydra_errors import config_groups, describe

TOP_KEYS = "seed, max_new_tokens, baseline, reference_acceptance, stop_at_eos, warmup, print_text, tags"
GROUPS = "dataset, draft, experiment, hardware, logger, method, model, prompt, sampling"
EXPERIMENTS = ("2x4090_offload_tp_autoregressive, 2x4090_offload_tp_triforce, a100_autoregressive, "
               "a100_lwm_chat_narrativeqa, a100_retrieval_spec, a100_triforce, acceptance_study, h100_mistral_nemo, "
               "h100_qwen2.5_7b_1m, h100_qwen3_8b, h100_smollm2_32k, "
               "rebuild_study, rtx4090_offload_autoregressive, rtx4090_offload_triforce, smoke")

CASES = {
    "foo=1": f"foo=1: the config has no key 'foo'; its keys are {TOP_KEYS}, and the groups {GROUPS} (group=option); "
             "use +foo=1 only for a key the run reads",
    "hardware.kernels.bogus=1": "hardware.kernels.bogus=1: hardware.kernels has no key 'bogus'; its keys are kernels, "
                                "pdl, linear, fold_norm, allreduce, chain_steps, tuning_file; use +hardware.kernels.bogus=1 only "
                                "for a key the run reads",
    "method.gama=4": "method.gama=4: method has no key 'gama'; its keys are name, gamma, ",
    "model.tiny.seed=3": "model.tiny.seed=3: model has no key 'tiny'; its keys are name, tokenizer, dtype, ",
    "experiment=does_not_exist": f"experiment=does_not_exist: experiment has no option 'does_not_exist'; choose one "
                                 f"of {EXPERIMENTS}",
    "method=bogus": "method=bogus: method has no option 'bogus'; choose one of auto, autoregressive, retrieval_spec, "
                    "spec, triforce",
    "hydra/launcher=nope": "hydra/launcher=nope: hydra/launcher has no option 'nope'; choose one of basic, slurm, ",
    "method.budget=[1,": "method.budget=[1,: not an override Hydra can parse (no viable alternative at input '[1,'); "
                         "overrides are key=value, group=option, +key=value or ~key",
    "+method.budget=3": "Could not append to config. An item is already at 'method.budget'. Either remove + prefix: "
                        "'method.budget=3' Or add a second + ",
}


@pytest.mark.parametrize("override", list(CASES))
def test_each_hydra_error_is_one_line_naming_the_key_and_what_exists(override):
    with pytest.raises(Exception) as e:
        compose(override)
    line = describe(e.value, ["logger=none", override])
    assert line.startswith(CASES[override]) and "\n" not in line, line


def test_other_errors_keep_their_traceback():
    assert describe(ValueError("a bug")) is None


def test_the_groups_are_the_config_folders():
    assert ", ".join(config_groups()) == GROUPS


@pytest.mark.parametrize("args", [["foo=1"], ["experiment=does_not_exist"], ["-m", "method=bogus,triforce"]])
def test_cli_hydra_errors_are_one_error_line_exit_2(tmp_path, args):
    """As a user types them (a multirun too): Hydra's own format (exit 1, 6-19 lines) no more."""
    override = args[-1] if args[-1] != "method=bogus,triforce" else "method=bogus"
    proc = run_cli([*args, "logger=none"], tmp_path, watch_weights=True)
    assert_one_error_before_any_weights(proc, CASES[override])
    if args[0] != "-m":  # (a multirun claims its sweep folder as it starts: left empty)
        assert not (tmp_path / "outputs").exists()  # nothing composed, nothing written


def test_help_and_cfg_still_work(tmp_path):
    helped = run_cli(["--help"], tmp_path)
    assert helped.returncode == 0 and "method: auto, autoregressive, retrieval_spec, spec, triforce" in helped.stdout
    shown = run_cli(["--cfg", "job", "method.budget=64"], tmp_path)
    assert shown.returncode == 0 and "budget: 64" in shown.stdout and shown.stderr == ""
