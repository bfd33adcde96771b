"""Inputs of the same kinds as the traces and cases, chosen to break the connector.

Each test is one defect found by a differential or adversarial run; the name says
the behaviour that must hold.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cti.ami.protocol import Parser
from cti.config import load_settings
from cti.crm.phone import normalise
from cti.errors import ConfigError


def _frames(data: bytes, cuts: list[int], limit: int) -> tuple[list[tuple[str, list]], int]:
    parser = Parser(expect_banner=False, max_message=limit)
    out = []
    prev = 0
    for cut in sorted(cuts) + [len(data)]:
        out += parser.feed(data[prev:cut])
        prev = cut
    return [(m.name, m.pairs) for m in out], parser.dropped


def test_a_message_near_the_size_cap_is_kept_or_dropped_whatever_the_read_boundaries() -> None:
    # A VarSet around max_message bytes (case 01's "buffer size" variant), once ASCII and
    # once Cyrillic (2 bytes a character), followed by a small event. Reading it in one
    # go, byte by byte or at random offsets must give the same messages.
    rng = random.Random(7)
    tail = b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
    for value in (b"x" * 600, "\u0410".encode() * 300):
        msg = b"Event: VarSet\r\nVariable: V\r\nValue: " + value
        for limit in range(len(msg) - 5, len(msg) + 6):
            data = msg + b"\r\n\r\n" + tail
            whole = _frames(data, [], limit)
            assert [n for n, _ in whole[0]][-1] == "Hangup"
            splits = [list(range(1, len(data)))] + [
                rng.sample(range(1, len(data)), 5) for _ in range(20)]
            for cuts in splits:
                assert _frames(data, cuts, limit) == whole, (limit, len(msg), sorted(cuts))
            # the cap counts bytes, as documented, not decoded characters
            assert (whole[1] == 1) == (len(msg) > limit)


@pytest.mark.parametrize(("raw", "region", "expected"), [
    ("１３８００１３８０００", "CN", "+8613800138000"),        # full-width digits (CJK IME)
    ("（０１０）１２３４５６７８", "CN", "+861012345678"),      # full-width brackets too
    ("＋８６ １３８ ００１３ ８０００", "US", "+8613800138000"),
])
def test_full_width_digits_typed_with_a_cjk_input_method_normalise_like_ascii(
        raw: str, region: str, expected: str) -> None:
    assert normalise(raw, region).value == expected


def test_a_config_error_never_echoes_an_agent_token(tmp_path: Path) -> None:
    path = tmp_path / "cti.toml"
    path.write_text('[[agents]]\nid = "1"\ntoken = 918273645546\ninterfaces = ["PJSIP/1"]\n')

    with pytest.raises(ConfigError) as err:
        load_settings(path)

    assert "agents.0.token" in str(err.value)
    assert "918273645546" not in str(err.value)


def test_a_misspelt_key_inside_a_section_is_reported_not_ignored(tmp_path: Path) -> None:
    # "secrt" would silently log in with the default secret; "interface" would leave the
    # agent without interfaces, so they never get a pop. Neither value is echoed.
    path = tmp_path / "cti.toml"
    path.write_text('[ami]\nsecrt = "s3cr3t-value"\n\n'
                    '[[agents]]\nid = "1"\ntoken = "t"\ninterface = ["PJSIP/1"]\n')

    with pytest.raises(ConfigError) as err:
        load_settings(path)

    assert "ami.secrt" in str(err.value) and "agents.0.interface" in str(err.value)
    assert "s3cr3t-value" not in str(err.value)
