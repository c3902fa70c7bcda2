"""Two runs started at the same moment get two folders, each complete and its own."""

from __future__ import annotations

import json
import subprocess
import threading

import yaml

from tests.app.helpers import cli_env
from triforce.app.rundirs import RESOLVER, claim_dir


def test_claims_race_to_distinct_folders(tmp_path):
    base = str(tmp_path / "outputs" / "runs" / "2026-01-01" / "12-00-00")
    claimed, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        claimed.append(claim_dir(base))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted([base] + [f"{base}-{i}" for i in range(1, 8)])


def test_two_runs_started_together_write_two_complete_folders(tmp_path):
    """Both runs name the same folder (as two runs in the same second do with the default
    outputs/runs/<date>/<time>): one gets it, the other the next free name; each folder holds one
    run's config, Hydra record and summary, never a mix."""
    import shutil
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("triforce")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "triforce.cli"]
    same = f"hydra.run.dir=${{{RESOLVER}:outputs/runs/together}}"
    procs = [subprocess.Popen(cmd + ["experiment=smoke", f"seed={seed}", same], cwd=tmp_path, env=cli_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (11, 22)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    folders = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert [f.name for f in folders] == ["together", "together-1"]
    seeds = set()
    for folder in folders:
        record = json.loads((folder / "summary.json").read_text())
        seed = record["params"]["seed"]
        assert record["status"] == "ok" and record["run_dir"] == str(folder)
        assert yaml.safe_load((folder / "config.yaml").read_text())["seed"] == seed
        assert yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["seed"] == seed
        assert f"seed={seed}" in yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
        seeds.add(seed)
    assert seeds == {11, 22}
    shutil.rmtree(tmp_path / "outputs")

