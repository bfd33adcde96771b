"""Settings: defaults, TOML, CTI_* environment, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from cti.config import load_settings
from cti.errors import ConfigError


def test_embedded_defaults_bind_loopback_and_have_demo_agents() -> None:
    s = load_settings()
    assert s.ami.host == s.agi.host == s.pops.host == s.http.host == "127.0.0.1"
    assert [a.id for a in s.agents][:4] == ["1001", "1002", "1003", "1004"]
    assert s.agi.lookup_budget_ms == 300


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cti.toml"
    cfg.write_text('[ami]\nhost = "10.0.0.5"\nport = 5039\nbackup = "10.0.0.6:5040"\n')
    monkeypatch.setenv("CTI_AMI_PORT", "6000")
    monkeypatch.setenv("CTI_AMI_SECRET", "s3cret")
    s = load_settings(cfg)
    assert [str(e) for e in s.ami.endpoints] == ["10.0.0.5:6000", "10.0.0.6:5040"]
    assert s.ami.secret.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_invalid_value_names_the_setting_and_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[agi]\nport = "abc"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "agi.port" in str(err.value) and "bad.toml" in str(err.value)
    assert "'abc'" in str(err.value)


def test_unknown_region_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTI_CRM_DEFAULT_REGION", "XX")
    with pytest.raises(ConfigError, match="crm.default_region"):
        load_settings()


def test_missing_file_and_broken_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[ami\nhost=")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_settings(broken)


def test_duplicate_agent_ids_are_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "agents.toml"
    cfg.write_text('[[agents]]\nid = "1"\n[[agents]]\nid = "1"\n')
    with pytest.raises(ConfigError, match="agent id '1' is listed twice"):
        load_settings(cfg)


def test_secret_is_not_echoed_in_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('[ami]\nsecret = 918273645\nport = 0\n')
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "ami.secret" in str(err.value) and "ami.port" in str(err.value)
    assert "918273645" not in str(err.value)
