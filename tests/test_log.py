"""Log hygiene: numbers masked to their last 4 digits, secrets never printed."""

from __future__ import annotations

import logging

import pytest
import structlog

from cti.log import get_logger, mask_number, mask_text, setup


@pytest.mark.parametrize("raw, masked", [
    ("+15551230001", "********0001"),
    ("13800138000", "*******8000"),
    ("1001", "1001"),
    ("", ""),
    ("(555) 123-4567", "(***) ***-4567"),
])
def test_mask_number_keeps_last_four_digits(raw: str, masked: str) -> None:
    assert mask_number(raw) == masked


def test_mask_text_masks_numbers_inside_sentences() -> None:
    assert mask_text("CTI route for +15551230001: vip") == "CTI route for ********0001: vip"


def test_info_lines_mask_numbers_and_hide_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    setup("INFO")
    get_logger("t").info("lookup for +8613800138000 done", number="+8613800138000",
                         secret="ctisecret", token="demo-1001")
    err = capsys.readouterr().err
    assert "8613800138000" not in err and "8000" in err
    assert "ctisecret" not in err and "demo-1001" not in err
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()  # other tests capture logs with structlog.testing


def test_error_text_at_warning_has_its_numbers_masked(capsys: pytest.CaptureFixture[str]) -> None:
    setup("INFO")
    get_logger("t").warning("crm lookup failed", error="no answer for +8613800138000")
    err = capsys.readouterr().err
    assert "8613800138000" not in err and "8000" in err
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def test_addresses_and_versions_are_not_mistaken_for_numbers() -> None:
    text = "server listening on 127.0.0.1:8765, Asterisk 22.10.1"
    assert mask_text(text) == text
