"""Reading a run's `.wandb` log: records spanning the log's 32 KiB blocks, nested config names,
history vs summary keys, and a corrupt or foreign file refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from triforce.dashboard.logged import BLOCK, logged_names, run_files

RUN = textwrap.dedent("""
    import sys, wandb
    run = wandb.init(project="p", group="g", dir=sys.argv[1], mode="offline",
                     config={"method": {"budget": 4, "name": "triforce"}, "blob": "x" * 70000},
                     settings=wandb.Settings(console="off", silent=True, save_code=False, disable_git=True))
    for i in range(300):
        run.log({"accept_rate/middle": i / 300, "c": float(i)})
    run.summary["only_in_summary"] = 1.0
    run.finish()
""")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A real offline run whose log spans several blocks (a 70 KB config value, 300 steps)."""
    tmp = tmp_path_factory.mktemp("wandb_log")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "NETRC": str(tmp / "none"),
           "WANDB_CONFIG_DIR": str(tmp / "cfg"), "WANDB_CACHE_DIR": str(tmp / "cache"), "WANDB_DATA_DIR": str(tmp / "data")}
    proc = subprocess.run([sys.executable, "-c", RUN, str(tmp)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = run_files([tmp])
    return path


def test_names_from_a_log_spanning_blocks(big_run):
    assert big_run.stat().st_size > 2 * BLOCK
    names = logged_names(big_run)
    assert {"method", "method.budget", "method.name", "blob"} <= names.config
    assert {"accept_rate/middle", "c"} <= names.history
    assert "only_in_summary" in names.summary and "only_in_summary" not in names.history
    assert names.groups == {"g"} and names.runs == 1


def test_a_corrupt_or_foreign_file_is_refused(big_run, tmp_path):
    data = bytearray(big_run.read_bytes())
    data[BLOCK + 100] ^= 0xFF
    corrupt = tmp_path / "run-x.wandb"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt record"):
        logged_names(corrupt)
    foreign = tmp_path / "notes.wandb"
    foreign.write_text("not a run log")
    with pytest.raises(ValueError, match="not a W&B run log"):
        logged_names(foreign)
