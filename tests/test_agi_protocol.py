"""FastAGI wire format: environment, replies and commands (cases 16 and 18, lab traces)."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

import pytest

from cti.agi.protocol import (
    HANGUP,
    AgiReply,
    EnvReader,
    ReplyReader,
    encode_command,
    is_dead_safe,
    parse_env,
    parse_reply,
    quote,
    set_variable_command,
    verbose_command,
)
from cti.errors import AgiHangup, AgiProtocolError

# -- inputs from the shared folder ----------------------------------------------------


def _code_block(text: str, heading: str) -> list[str]:
    """Lines of the first ``` block after ``heading`` in a case file."""
    start = text.index(heading)
    open_ = text.index("```", start)
    close = text.index("```", open_ + 3)
    return text[open_ + 3:close].strip("\n").split("\n")


def _unescape(line: str) -> bytes:
    """A case-file line such as ``agi_x: \\xe5\\n`` as the bytes it stands for."""
    return codecs.escape_decode(line.encode("ascii"))[0]


@pytest.fixture(scope="module")
def case18_env(cases_dir: Path) -> bytes:
    """The environment block of case 18, byte for byte (truncated UTF-8 included)."""
    text = (cases_dir / "18-agi-env-script-args-encoding.md").read_text()
    lines = _code_block(text, "## Minimal replay input")
    return b"".join(_unescape(line) for line in lines)


@pytest.fixture(scope="module")
def case16_script(cases_dir: Path) -> list[tuple[str, bytes]]:
    """Case 16 as (command the server sends, bytes Asterisk answers) pairs."""
    text = (cases_dir / "16-agi-hangup-notification-511.md").read_text()
    steps: list[tuple[str, bytes]] = []
    for line in _code_block(text, "## Minimal replay input"):
        sent = re.fullmatch(r"# server sends: (.*)\\n", line)
        if sent:
            steps.append((sent.group(1), b""))
        else:
            command, reply = steps[-1]
            steps[-1] = (command, reply + _unescape(line))
    return steps


def _trace_sessions(traces_dir: Path) -> list[dict]:
    sessions = []
    for path in sorted(traces_dir.glob("*.agi.jsonl")):
        for line in path.read_text().splitlines():
            sessions.append(json.loads(line))
    return sessions


# -- environment ----------------------------------------------------------------------


def test_case18_env_gives_script_without_query_and_decoded_params(case18_env: bytes) -> None:
    request = parse_env(case18_env.split(b"\n"))

    assert request.script == "crm/lookup"
    assert request.params == {"tenant": ["acme"], "lang": ["zh"]}


def test_case18_args_keep_order_spaces_and_empty_values(case18_env: bytes) -> None:
    request = parse_env(case18_env.split(b"\n"))

    # The value after "agi_arg_1: " is kept verbatim: the dialplan's leading space stays.
    assert request.args == [" 101-102-103", "hello world", ""]
    assert request.arg(3) == ""
    assert request.arg(4) is None


def test_case18_truncated_utf8_name_is_replaced_not_fatal(case18_env: bytes) -> None:
    request = parse_env(case18_env.split(b"\n"))

    assert request.calleridname == "张三 ACME \ufffd"
    assert request.callerid == "13800138000"


def test_case18_unknown_values_accountcode_and_negative_threadid(case18_env: bytes) -> None:
    request = parse_env(case18_env.split(b"\n"))

    assert request.rdnis is None
    assert request.dnid == "4001234567"
    assert request.accountcode == ""
    assert request.threadid == -1289290944
    assert request.uniqueid == "1700000000.170145"
    assert request.channel == "PJSIP/trunk-00011487"
    assert (request.context, request.extension) == ("from-trunk", "s")


def test_env_reader_assembles_one_byte_segments(case18_env: bytes) -> None:
    reader = EnvReader()
    whole = parse_env(case18_env.split(b"\n"))

    results = [reader.feed(case18_env[i:i + 1]) for i in range(len(case18_env))]

    assert results[:-1] == [None] * (len(case18_env) - 1)
    assert results[-1] == whole
    assert reader.rest == b""


def test_env_reader_keeps_bytes_after_the_blank_line(case18_env: bytes) -> None:
    reader = EnvReader()

    request = reader.feed(case18_env + b"HANGUP\n")

    assert request is not None and request.script == "crm/lookup"
    assert reader.rest == b"HANGUP\n"


def test_crlf_environment_reads_like_lf(case18_env: bytes) -> None:
    crlf = case18_env.replace(b"\n", b"\r\n")

    assert EnvReader().feed(crlf) == parse_env(case18_env.split(b"\n"))


def test_leading_slash_script_is_stripped(case18_env: bytes) -> None:
    env = re.sub(rb"agi_network_script: [^\n]*",
                 b"agi_network_script: /var/lib/asterisk/agi-bin/crm.agi", case18_env)

    request = EnvReader().feed(env)

    assert request is not None
    assert request.script == "var/lib/asterisk/agi-bin/crm.agi"
    assert request.params == {}


def test_request_without_path_has_no_script(case18_env: bytes) -> None:
    env = re.sub(rb"agi_network_script: [^\n]*\n", b"", case18_env)
    env = re.sub(rb"agi_request: [^\n]*", b"agi_request: agi://127.0.0.1:4573", env)

    request = EnvReader().feed(env)

    assert request is not None
    assert request.script is None
    assert request.params == {}


def test_script_with_empty_query_routes_by_name() -> None:
    request = parse_env(["agi_network_script: foo?", "agi_request: agi://127.0.0.1/foo?", ""])

    assert (request.script, request.params) == ("foo", {})


@pytest.mark.parametrize("line", ["agi_:", "agi_arg_1 foo", "agi_type:", "hello world",
                                  "AGI_TYPE: Local", ": value"])
def test_malformed_env_line_is_rejected_naming_it(line: str) -> None:
    with pytest.raises(AgiProtocolError) as err:
        EnvReader().feed(b"agi_network: yes\n" + line.encode() + b"\n\n")

    assert repr(line) in str(err.value)


def test_env_without_blank_line_is_bounded() -> None:
    reader = EnvReader(max_bytes=1000)

    with pytest.raises(AgiProtocolError, match="larger than 1000 bytes"):
        for _ in range(100):
            reader.feed(b"agi_arg_1: " + b"x" * 50 + b"\n")


def test_every_trace_env_parses_to_the_recorded_values(traces_dir: Path) -> None:
    sessions = _trace_sessions(traces_dir)
    assert len(sessions) == 24

    for session in sessions:
        raw_env = session["raw_in"].encode().split(b"\n\n", 1)[0] + b"\n\n"
        request = EnvReader().feed(raw_env)

        assert request is not None
        assert request.env == dict(session["env"])
        assert request.script == "route"
        assert request.args == ["5550100"]
        assert request.dnid is None                 # Local channels say "unknown"
        assert request.accountcode == ""
        assert request.callerid == dict(session["env"])["agi_callerid"]


# -- replies --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("200 result=1", AgiReply(200, "1")),
    ("200 result=0", AgiReply(200, "0")),
    ("200 result=1 (Judy Live)", AgiReply(200, "1", "Judy Live")),
    ("200 result=1 (a (nested) value)", AgiReply(200, "1", "a (nested) value")),
    ("200 result=1 ()", AgiReply(200, "1", "")),
    ("200 result=1 (hangup)", AgiReply(200, "1", "hangup")),   # a value, not a hangup
    ("200 result=-1 (hangup) endpos=25280",
     AgiReply(200, "-1", "hangup", hangup=True, extra={"endpos": "25280"})),
    ("200 result=0 endpos=1234", AgiReply(200, "0", extra={"endpos": "1234"})),
    ("200 result=1\r\n", AgiReply(200, "1")),
    ("510 Invalid or unknown command", AgiReply(510, text="Invalid or unknown command")),
    ("511 Command Not Permitted on a dead channel",
     AgiReply(511, hangup=True, text="Command Not Permitted on a dead channel")),
    ("520 Invalid command syntax.  Proper usage not available.",
     AgiReply(520, text="Invalid command syntax.  Proper usage not available.")),
    ("HANGUP\n200 result=1\n", AgiReply(200, "1", hangup=True)),
    ("HANGUP200 result=1", AgiReply(200, "1", hangup=True)),
    ("HANGUP\nHANGUP\n200 result=1 (x)", AgiReply(200, "1", "x", hangup=True)),
    ("100 result=0 Trying...\n200 result=0\n", AgiReply(200, "0")),
])
def test_reply_is_parsed(text: str, expected: AgiReply) -> None:
    assert parse_reply(text) == expected


def test_multiline_520_usage_is_one_reply_even_after_hangup() -> None:
    text = ("HANGUP\n520-Invalid command syntax.  Proper usage follows:\n"
            " Usage: SET VARIABLE <variablename> <value>\n"
            "\n"
            "520 End of proper usage.\n")

    reply = parse_reply(text)

    assert (reply.code, reply.hangup) == (520, True)
    assert reply.text == "Invalid command syntax.  Proper usage follows:"
    assert reply.usage == (" Usage: SET VARIABLE <variablename> <value>", "")


@pytest.mark.parametrize("junk", ["2222222", "-1 result=4", "780 result=0",
                                  "Usage: SET VARIABLE <name> <value>", "200 ok", "OK"])
def test_junk_reply_is_a_protocol_error_naming_the_line(junk: str) -> None:
    with pytest.raises(AgiProtocolError) as err:
        parse_reply(junk)

    assert repr(junk) in str(err.value)


def test_bare_hangup_is_a_hangup_not_a_parse_error() -> None:
    with pytest.raises(AgiHangup):
        parse_reply("HANGUP\n")


def test_case16_stream_keeps_replies_paired_in_any_segmentation(
        case16_script: list[tuple[str, bytes]]) -> None:
    assert [cmd for cmd, _ in case16_script] == [
        "ANSWER", 'SET VARIABLE CRM_CONTACT_ID "42"', "GET VARIABLE CRM_CALL_ID",
        'EXEC Playback "thanks"']
    stream = b"".join(reply for _, reply in case16_script)
    expected = [AgiReply(200, "0"), HANGUP, AgiReply(200, "1"),
                AgiReply(511, hangup=True, text="Command Not Permitted on a dead channel"),
                AgiReply(511, hangup=True, text="Command Not Permitted on a dead channel")]

    whole = ReplyReader().feed(stream)
    reader = ReplyReader()
    bytewise = [item for i in range(len(stream)) for item in reader.feed(stream[i:i + 1])]

    assert whole == expected
    assert bytewise == expected


def test_intermediate_100_reply_is_reported_as_not_final() -> None:
    items = ReplyReader().feed(b"100 result=0 Trying...\n200 result=0\n")

    assert [(i.code, i.final) for i in items if isinstance(i, AgiReply)] == [(100, False),
                                                                            (200, True)]


# -- commands -------------------------------------------------------------------------


def test_commands_are_formatted_as_in_the_lab_traces(traces_dir: Path) -> None:
    checked = 0
    for session in _trace_sessions(traces_dir):
        for exchange in session["exchanges"]:
            line = exchange["line"]
            if exchange["dir"] != "out":
                continue
            if m := re.fullmatch(r'SET VARIABLE (\S+) "(.*)"', line):
                assert set_variable_command(m.group(1), m.group(2)) == line
                checked += 1
            elif m := re.fullmatch(r'VERBOSE "(.*)" (\d)', line):
                assert verbose_command(m.group(1), int(m.group(2))) == line
                checked += 1
    assert checked == 24 * 5


def test_quote_escapes_backslash_and_double_quote() -> None:
    assert quote('say "hi" \\ ok') == '"say \\"hi\\" \\\\ ok"'
    assert set_variable_command("CTI_QUEUE", "vip") == 'SET VARIABLE CTI_QUEUE "vip"'


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b"])
def test_line_breaks_in_values_are_refused(value: str) -> None:
    with pytest.raises(AgiProtocolError, match="line break"):
        set_variable_command("CTI_QUEUE", value)
    with pytest.raises(AgiProtocolError):
        encode_command(f"VERBOSE {value}")


@pytest.mark.parametrize("name", ["", "TWO WORDS", 'Q"', "A\nB"])
def test_bad_variable_names_are_refused(name: str) -> None:
    with pytest.raises(AgiProtocolError, match="variable name"):
        set_variable_command(name, "x")


def test_encode_command_adds_lf_and_refuses_oversized_lines() -> None:
    assert encode_command("ANSWER") == b"ANSWER\n"
    with pytest.raises(AgiProtocolError, match="at most 2048"):
        encode_command(set_variable_command("X", "y" * 3000))


@pytest.mark.parametrize(("command", "safe"), [
    ('SET VARIABLE CTI_QUEUE "vip"', True), ("GET VARIABLE CALLERID(num)", True),
    ("get full variable ${CALLERID(num)}", True), ('VERBOSE "x" 1', True), ("NOOP", True),
    ("DATABASE PUT cti key 1", True), ("ANSWER", False), ('EXEC Playback "thanks"', False),
    ("STREAM FILE hello \"\"", False), ("GOSUB sub s 1", False), ("HANGUP", False),
])
def test_dead_safe_commands(command: str, safe: bool) -> None:
    assert is_dead_safe(command) is safe
