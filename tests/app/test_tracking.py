"""W&B mode resolution: offline unless an account is configured; WANDB_MODE wins; never a hang."""

from __future__ import annotations

import pytest

from triforce.app.tracking import NullTracker, has_credentials, open_tracker, resolve_mode
from triforce.errors import ConfigError


@pytest.fixture
def netrc_with_key(tmp_path):
    path = tmp_path / "netrc"
    path.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    path.chmod(0o600)
    return path


def test_no_account_means_offline(tmp_path):
    assert resolve_mode("auto", {}, tmp_path / "missing") == "offline"
    assert resolve_mode("online", {}, tmp_path / "missing") == "offline"
    assert not has_credentials({}, tmp_path / "missing")


def test_account_means_online(tmp_path, netrc_with_key):
    assert resolve_mode("auto", {"WANDB_API_KEY": "x" * 40}, tmp_path / "missing") == "online"
    assert resolve_mode("auto", {}, netrc_with_key) == "online"
    assert resolve_mode("offline", {}, netrc_with_key) == "offline"


def test_netrc_entry_for_another_host_does_not_count(tmp_path):
    path = tmp_path / "netrc"
    path.write_text("machine example.com\n  login a\n  password b\n")
    path.chmod(0o600)
    assert resolve_mode("auto", {}, path) == "offline"
    assert resolve_mode("auto", {"WANDB_BASE_URL": "https://example.com"}, path) == "online"


def test_wandb_mode_env_wins(tmp_path, netrc_with_key):
    assert resolve_mode("auto", {"WANDB_MODE": "offline"}, netrc_with_key) == "offline"
    assert resolve_mode("offline", {"WANDB_MODE": "disabled"}, netrc_with_key) == "disabled"
    assert resolve_mode("auto", {"WANDB_MODE": "dryrun"}, tmp_path / "missing") == "offline"
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes'"):
        resolve_mode("auto", {"WANDB_MODE": "sometimes"}, tmp_path / "missing")
    with pytest.raises(ConfigError, match="logger.mode='maybe'"):
        resolve_mode("maybe", {}, tmp_path / "missing")


def test_logger_none_and_disabled_track_nothing(tmp_path, monkeypatch):
    kw = dict(config={}, run_dir=tmp_path, name="n", group=None, job_type="triforce", tags=[])
    assert isinstance(open_tracker({"name": "none"}, **kw), NullTracker)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert isinstance(open_tracker({"name": "wandb", "mode": "auto"}, **kw), NullTracker)
