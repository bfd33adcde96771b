"""The `cti` command's one-shot subcommands, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cti.cli import main


@pytest.fixture()
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CTI_CRM_PATH", str(tmp_path / "crm.sqlite3"))
    monkeypatch.setenv("CTI_CRM_SEED_DEMO", "true")
    monkeypatch.setenv("CTI_STORE_PATH", str(tmp_path / "cti.sqlite3"))
    return tmp_path


def test_route_explains_the_decision_for_a_vip(state: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["route", "+15551230001"]) == 0
    out = capsys.readouterr().out
    assert "CUST-1001" in out and "queue=vip priority=5" in out
    assert "rule 'vip': match" in out


def test_route_for_a_chinese_number_in_national_form_uses_the_region(
        state: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CTI_CRM_DEFAULT_REGION", "CN")
    assert main(["route", "13800138000"]) == 0
    out = capsys.readouterr().out
    assert "+8613800138000" in out and "Zhang Wei" in out


def test_route_for_withheld_caller_gives_default_route(state: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["route", "anonymous"]) == 0
    out = capsys.readouterr().out
    assert "queue=general" in out and "customer_id=-" in out and "source=default" in out


def test_calls_json_on_a_fresh_install_prints_an_empty_list(state: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["calls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_calls_live_without_a_daemon_is_a_clear_error(state: Path, capsys,
                                                      monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CTI_HTTP_PORT", "1")
    assert main(["calls", "--live"]) == 2
    assert "is `cti run` / `cti demo` running?" in capsys.readouterr().err


def test_crm_import_keeps_good_rows_reports_bad_ones_and_exits_1(state: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    csv = state / "customers.csv"
    csv.write_text(
        "customer_id,name,segment,phones,email,company,timezone,tags,products,do_not_call\n"
        "C-1,Ann Good,gold,+1 212 555 0101,ann@example.com,,America/New_York,vip,Fibre 1G,no\n"
        "C-2,Bad Zone,standard,+1 212 555 0102,,,Mars/Base,,,no\n")
    assert main(["crm", "import", str(csv), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "Mars/Base" in out and "line 3" in out
    assert main(["route", "+12125550101"]) == 0
    assert "C-1" in capsys.readouterr().out


def test_check_config_names_the_bad_setting(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "cti.toml"
    cfg.write_text('[agi]\nlookup_budget_ms = 5\n')
    assert main(["check-config", "--config", str(cfg)]) == 2
    assert "agi.lookup_budget_ms" in capsys.readouterr().err


def test_replay_of_a_missing_file_is_a_clear_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["replay", "/nonexistent/x.ami.raw"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_config_refuses_demo_tokens_on_a_network_address(
        tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "cti.toml"
    cfg.write_text('[pops]\nhost = "0.0.0.0"\n')
    assert main(["check-config", "--config", str(cfg)]) == 2
    assert "demo pop tokens" in capsys.readouterr().err


def test_a_bad_environment_value_is_blamed_on_the_variable(
        monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CTI_AMI_PORT", "abc")
    assert main(["check-config"]) == 2
    assert "environment variable CTI_AMI_PORT" in capsys.readouterr().err


def test_route_on_an_empty_crm_says_how_to_fill_it(tmp_path: Path, capsys,
                                                    monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CTI_CRM_PATH", str(tmp_path / "empty.sqlite3"))
    assert main(["route", "+15551230001"]) == 0
    assert "is empty: run `cti demo`" in capsys.readouterr().out
