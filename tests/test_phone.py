"""Phone normalisation and outbound dial formatting (cases 15 and 20)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cti.crm.phone import DialNumberError, Number, format_for_dial, normalise
from cti.errors import ConfigError


def _backticked(line: str) -> list[str]:
    return re.findall(r"`([^`]*)`", line)


def _case_line(cases_dir: Path, name: str, starts: str) -> str:
    text = (cases_dir / name).read_text(encoding="utf-8")
    return next(line for line in text.splitlines() if line.startswith(starts))


# --- case 15: the many spellings of "no number" --------------------------------------


def test_case15_extra_strings_are_no_usable_number(cases_dir: Path) -> None:
    line = _case_line(cases_dir, "15-empty-anonymous-callerid.md", "Extra strings")
    strings = [json.loads(s) for s in _backticked(line)]
    assert len(strings) == 13 and "<unknown>" in strings and "   " in strings

    for raw in strings:
        number = normalise(raw, "US")
        assert number.kind == "none", raw
        assert number.value is None and not number.usable
        assert number.raw == raw and number.reason


def test_case15_replayed_caller_ids_only_the_late_digits_are_usable(cases_dir: Path) -> None:
    text = (cases_dir / "15-empty-anonymous-callerid.md").read_text(encoding="utf-8")
    caller_ids = re.findall(r"\\r\\nCallerIDNum: ([^\\]*)\\r\\n", text)
    assert caller_ids == ["", "5550000001", "anonymous", "<unknown>", "INTERNATIONAL"]

    usable = {raw: normalise(raw, "US") for raw in caller_ids}
    assert [raw for raw, n in usable.items() if n.usable] == ["5550000001"]
    assert usable["5550000001"] == Number("e164", "+15550000001", "5550000001")


@pytest.mark.parametrize("raw", [None, "INTERNATIONAL", "sdfasdf", "n/a", "*69", "12a45",
                                 "+1 555 abc", "0000000", "++15551234567", "\x00", "١٢٣"])
def test_text_and_garbage_never_raise_and_are_unusable(raw: str | None) -> None:
    assert normalise(raw, "DE").kind == "none"


def test_numbers_shorter_than_min_digits_are_unusable_but_configurable() -> None:
    assert normalise("12", "US").kind == "none"
    assert normalise("12", "US", min_digits=2) == Number("short", "12", "12")
    assert normalise("123", "US", min_digits=4).reason == "too short"


# --- case 20: formatted CRM values and bare-digit caller ids ----------------------------


@pytest.mark.parametrize("raw, region, value", [
    ("138-0013-8000", "CN", "+8613800138000"),
    ("(555) 123-4567", "US", "+15551234567"),
    ("+1 555 123 4568", "DE", "+15551234568"),
    ("+1 555 123 4567", "CN", "+15551234567"),
    ("+49 30 1234567", "US", "+49301234567"),
    ("030/1234568", "DE", "+49301234568"),
    ("555.123.0020", "US", "+15551230020"),
    ("+4912345", "US", "+4912345"),
])
def test_crm_values_are_stored_as_e164_with_the_contacts_region(raw, region, value) -> None:
    assert normalise(raw, region) == Number("e164", value, raw)


@pytest.mark.parametrize("region", ["US", "CN", "DE"])
def test_five_digits_are_a_short_number_never_e164(region: str) -> None:
    number = normalise("12345", region)
    assert number == Number("short", "12345", "12345")
    assert number.value != normalise("+4912345", region).value


INCOMING = {  # caller id -> normalised value with home region US, CN, DE (None = unusable)
    "13800138000": ("+13800138000", "+8613800138000", "+4913800138000"),
    "+8613800138000": ("+8613800138000",) * 3,
    "008613800138000": ("+8613800138000",) * 3,
    "5551234567": ("+15551234567", "+865551234567", "+495551234567"),
    "15551234567": ("+15551234567", "+8615551234567", "+4915551234567"),
    "+15551234567": ("+15551234567",) * 3,
    "+1 (555) 123-4568": ("+15551234568",) * 3,
    "0301234567": ("+10301234567", "+86301234567", "+49301234567"),
    "+49301234567": ("+49301234567",) * 3,
    "4930 1234567": (None, "+8649301234567", "+49301234567"),
    "12345": ("12345",) * 3,
}


def test_case20_incoming_list_is_the_one_tested_here(cases_dir: Path) -> None:
    line = _case_line(cases_dir, "20-phone-format-normalisation.md", "`13800138000`")
    assert set(_backticked(line)) == set(INCOMING)


@pytest.mark.parametrize("raw", list(INCOMING))
@pytest.mark.parametrize("index, region", [(0, "US"), (1, "CN"), (2, "DE")])
def test_case20_incoming_caller_ids_per_home_region(raw: str, index: int, region: str) -> None:
    assert normalise(raw, region).value == INCOMING[raw][index]


def test_home_us_does_not_turn_a_bare_chinese_mobile_into_plus_86() -> None:
    assert normalise("13800138000", "US").value != "+8613800138000"
    assert normalise("13800138000", "CN").value == "+8613800138000"


def test_555_01xx_test_numbers_are_accepted_although_invalid() -> None:
    # phonenumbers.is_valid_number() is False for these; matching must still work.
    assert normalise("+15551230001", "US").value == "+15551230001"
    assert normalise("(212) 555-0142", "US").value == "+12125550142"


def test_normalising_is_idempotent_on_its_own_output() -> None:
    for raw in ("138-0013-8000", "(555) 123-4567", "12345", "030/1234568"):
        first = normalise(raw, "CN" if raw.startswith("138") else "DE")
        assert first.value is not None
        assert normalise(first.value, "US").value == first.value


def test_unknown_region_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="'XX'"):
        normalise("5551234567", "XX")


# --- outbound: format for the PBX's dial plan, never from the agent's country ---------


def test_case20_turkish_number_for_a_us_pbx() -> None:
    e164 = normalise("+90 216 000 00 00", "US").value
    assert e164 == "+902160000000"
    assert format_for_dial(e164, "e164", "US") == "+902160000000"
    assert format_for_dial(e164, "national", "US") == "011902160000000"
    # the prefix follows the PBX's country, nothing else
    assert format_for_dial(e164, "national", "DE") == "00902160000000"


@pytest.mark.parametrize("e164, pbx, dialled", [
    ("+15551234567", "US", "15551234567"),
    ("+49301234567", "DE", "0301234567"),
    ("+8613800138000", "CN", "13800138000"),
    ("+8613800138000", "US", "0118613800138000"),
])
def test_national_style_dials_home_numbers_nationally(e164, pbx, dialled) -> None:
    assert format_for_dial(e164, "national", pbx) == dialled


def test_short_numbers_are_dialled_unchanged() -> None:
    assert format_for_dial("12345", "national", "US") == "12345"
    assert format_for_dial("12345", "e164", "DE") == "12345"


@pytest.mark.parametrize("bad", ["5551234567", "+1", "anonymous", ""])
def test_dialling_an_unnormalised_number_raises_naming_it(bad: str) -> None:
    with pytest.raises(DialNumberError, match=re.escape(repr(bad))):
        format_for_dial(bad, "e164", "US")


def test_unknown_dial_style_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'intl'"):
        format_for_dial("+15551234567", "intl", "US")  # type: ignore[arg-type]
