"""cti.ami.protocol as a specification: bytes in, messages out; actions in, bytes out.

Inputs come from the public cases (shared/cases 01, 03, 04, 06, 07, 10) exactly as written
there, and from the recorded Asterisk 22 sessions (shared/traces/*.ami.*).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from casefiles import case_blocks

from cti.ami.protocol import Kind, Message, Parser, build_action, chan_vars, is_empty_value
from cti.errors import AmiProtocolError

# --- helpers -------------------------------------------------------------------------


def feed_all(parser: Parser, segments: list[bytes]) -> list[Message]:
    out: list[Message] = []
    for segment in segments:
        out += parser.feed(segment)
    return out


def one_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def parse(data: bytes, *, bytewise: bool = False) -> list[Message]:
    segments = one_byte(data) if bytewise else [data]
    return feed_all(Parser(expect_banner=False), segments)


TRACES = sorted((Path(__file__).resolve().parents[2] / "shared" / "traces").glob("*.ami.raw"))


# --- case 01: split reads, UTF-8 cut in half, big messages -------------------------------


def test_utf8_char_split_across_reads_is_decoded_whole_and_events_wait_for_their_end(
        cases_dir: Path) -> None:
    (seg1,), (seg2,), (seg3,) = case_blocks(cases_dir, "01")
    parser = Parser(expect_banner=False)

    assert parser.feed(seg1) == []
    after_seg2 = parser.feed(seg2)
    assert [m.name for m in after_seg2] == ["Newchannel"]
    newchannel = after_seg2[0]
    assert newchannel["CallerIDName"] == "Анна"
    assert newchannel["Linkedid"] == "1700000000.101"
    assert parser.buffered > 0  # Newstate is held back, not emitted half-parsed

    after_seg3 = parser.feed(seg3)
    assert [m.name for m in after_seg3] == ["Newstate"]
    assert after_seg3[0]["ChannelStateDesc"] == "Ringing"
    assert parser.buffered == 0


def test_case01_fed_one_byte_at_a_time_emits_each_event_on_its_last_byte(
        cases_dir: Path) -> None:
    data = b"".join(seg for block in case_blocks(cases_dir, "01") for seg in block)
    parser = Parser(expect_banner=False)
    emitted_at = []
    messages = []
    for i, byte in enumerate(one_byte(data)):
        for msg in parser.feed(byte):
            emitted_at.append(i)
            messages.append(msg)

    assert [m.name for m in messages] == ["Newchannel", "Newstate"]
    assert messages[0]["CallerIDName"] == "Анна"
    first_end = data.index(b"\r\n\r\n") + 3
    assert emitted_at == [first_end, len(data) - 1]


def test_70kb_varset_in_1kb_segments_is_accepted_whole() -> None:
    value = "x" * 70_000
    data = (f"Event: VarSet\r\nPrivilege: dialplan,all\r\nVariable: BIG\r\nValue: {value}\r\n"
            "Uniqueid: 1700000000.7\r\n\r\n").encode()
    parser = Parser(expect_banner=False)

    messages = feed_all(parser, [data[i:i + 1024] for i in range(0, len(data), 1024)])

    assert len(messages) == 1
    assert messages[0]["Value"] == value
    assert messages[0]["Uniqueid"] == "1700000000.7"
    assert parser.dropped == 0


def test_message_over_1mib_is_dropped_and_the_next_message_still_parsed(caplog) -> None:
    huge = b"Event: VarSet\r\nValue: " + b"x" * (1 << 20) + b"\r\n\r\n"
    data = huge + b"Event: Hangup\r\nUniqueid: 1700000000.9\r\nCause: 16\r\n\r\n"
    parser = Parser(expect_banner=False)

    with caplog.at_level(logging.WARNING, logger="cti.ami.protocol"):
        messages = feed_all(parser, [data[i:i + 1024] for i in range(0, len(data), 1024)])

    assert [m.name for m in messages] == ["Hangup"]
    assert messages[0]["Cause"] == "16"
    assert parser.dropped == 1
    assert parser.buffered == 0
    assert "dropped an AMI message" in caplog.text


@pytest.mark.parametrize("cut", range(-4, 3))
def test_oversized_message_resynchronises_whatever_read_splits_its_terminator(cut: int) -> None:
    big = b"Event: VarSet\r\nValue: " + b"y" * 200 + b"\r\n\r\n"
    data = big + b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
    split = len(big) + cut  # the read boundary falls before, inside or after "\r\n\r\n"
    parser = Parser(expect_banner=False, max_message=100)

    messages = feed_all(parser, [data[:split], data[split:]])

    assert [m.name for m in messages] == ["Hangup"]
    assert parser.dropped == 1


def test_invalid_utf8_becomes_replacement_chars_without_raising() -> None:
    [msg] = parse(b"Event: Newchannel\r\nCallerIDName: \xff\xfeBob\xd0\r\n\r\n")

    assert msg["CallerIDName"] == "\ufffd\ufffdBob\ufffd"


# --- case 03: Command output, both formats; colon-less lines ---------------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-read", "1-byte-reads"])
def test_legacy_follows_reply_becomes_output_lines_without_trailer(
        cases_dir: Path, bytewise: bool) -> None:
    blocks = case_blocks(cases_dir, "03")

    [msg] = parse(blocks[1][0], bytewise=bytewise)

    assert msg.kind is Kind.RESPONSE and msg.name == "Follows"
    assert msg.action_id == "cmd-1"
    assert msg.output == ["System uptime: 2 hours, 3 minutes, 4 seconds",
                          "Last reload: 2 hours, 3 minutes, 4 seconds"]


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-read", "1-byte-reads"])
def test_legacy_follows_body_with_blank_lines_is_one_message(
        cases_dir: Path, bytewise: bool) -> None:
    blocks = case_blocks(cases_dir, "03")
    data = blocks[2][0] + blocks[3][0]  # the modern reply right behind it

    messages = parse(data, bytewise=bytewise)

    assert [(m.kind, m.action_id) for m in messages] == [
        (Kind.RESPONSE, "cmd-4"), (Kind.RESPONSE, "cmd-2")]
    output = messages[0].output
    assert len(output) == 8
    assert output[0].startswith("sales has 0 calls")
    assert output[1:4] == ["   No Members", "   No Callers", ""]
    assert output[4].startswith("support has 0 calls")
    assert output[5:] == ["   No Members", "   No Callers", ""]
    assert not any("--END COMMAND--" in line for line in output)


def test_legacy_trailer_glued_to_the_last_output_line_is_stripped() -> None:
    data = (b"Response: Follows\r\nPrivilege: Command\r\nActionID: c\r\n"
            b"uptime 5--END COMMAND--\r\n\r\n")

    [msg] = parse(data)

    assert msg.output == ["uptime 5"]


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-read", "1-byte-reads"])
def test_modern_command_output_keeps_every_line_in_order_including_empty_last(
        cases_dir: Path, bytewise: bool) -> None:
    blocks = case_blocks(cases_dir, "03")

    [msg] = parse(blocks[3][0], bytewise=bytewise)

    assert (msg.kind, msg.name, msg.action_id) == (Kind.RESPONSE, "Success", "cmd-2")
    assert msg["Message"] == "Command output follows"
    assert msg.output == ["System uptime: 2 hours, 3 minutes, 4 seconds",
                          "Last reload: 2 hours, 3 minutes, 4 seconds", ""]


def test_modern_command_error_is_an_error_response_that_keeps_its_output(
        cases_dir: Path) -> None:
    [msg] = parse(case_blocks(cases_dir, "03")[4][0])

    assert (msg.kind, msg.name, msg.action_id) == (Kind.RESPONSE, "Error", "cmd-3")
    assert msg.output == ["No such command 'core show hi' (type 'core show help core show hi' "
                          "for other possible commands)"]


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-read", "1-byte-reads"])
def test_end_sms_event_line_without_colon_is_kept_and_the_event_delivered(
        cases_dir: Path, bytewise: bool) -> None:
    data = case_blocks(cases_dir, "03")[5][0]

    [msg] = parse(data + b"Event: Hangup\r\nUniqueid: 1.2\r\n\r\n", bytewise=bytewise)[:1]

    assert (msg.kind, msg.name) == (Kind.EVENT, "ReceivedSMS")
    assert msg["Content"] == "test message"
    assert msg["Sender"] == "+15550000001"
    assert msg["ID"] == ""
    assert ("", "--END SMS EVENT--") in msg.pairs


def test_command_action_bytes_match_the_case(cases_dir: Path) -> None:
    expected = case_blocks(cases_dir, "03")[0][0]

    assert build_action("Command", "cmd-1", {"Command": "core show uptime"}) == expected


# --- case 04: odd terminators and blank lines -----------------------------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-read", "1-byte-reads"])
def test_odd_terminators_and_extra_blank_lines_give_exactly_four_events(
        cases_dir: Path, bytewise: bool) -> None:
    data = b"".join(case_blocks(cases_dir, "04")[0])

    messages = parse(data, bytewise=bytewise)

    assert [m.name for m in messages] == ["CoreShowChannelMap", "TestEvent", "Agents", "Hangup"]
    assert all(m.kind is Kind.EVENT for m in messages)
    assert messages[0].action_id == "map-1"
    agents = messages[2]
    assert agents["CallStarted"] == "1700000100"
    assert agents["LoggedInTime"] == "1700000000"
    assert agents["Channel"] == "SIP/1234-00000060"


def test_last_event_is_emitted_as_soon_as_its_blank_line_arrives(cases_dir: Path) -> None:
    data = b"".join(case_blocks(cases_dir, "04")[0])
    parser = Parser(expect_banner=False)

    early = parser.feed(data[:-2])
    late = parser.feed(data[-2:])

    assert [m.name for m in early] == ["CoreShowChannelMap", "TestEvent", "Agents"]
    assert [m.name for m in late] == ["Hangup"]


# --- case 06: repeated headers in and out ---------------------------------------------


def test_chan_vars_groups_plain_and_channel_scoped_variables(cases_dir: Path) -> None:
    [dial] = parse(case_blocks(cases_dir, "06")[0][0])

    assert chan_vars(dial) == {
        "": {"var1": "", "var2": "value2"},
        "Local/0@pbx_dial-00000008;2": {"CRM_ID": "42"},
        "SIP/jw1034-00000010": {"CRM_ID": "43"},
    }
    assert dial["UniqueID"] == dial["uniqueid"] == "pbx-1439974866.33"


def test_dest_chan_variable_goes_under_dest() -> None:
    msg = Message.from_pairs([("Event", "DialBegin"), ("DestChanVariable", "CRM_ID=7")])

    assert chan_vars(msg) == {"dest": {"CRM_ID": "7"}}


def test_repeated_variable_headers_are_all_kept_in_order(cases_dir: Path) -> None:
    [status] = parse(case_blocks(cases_dir, "06")[1][0])

    assert status.get_all("Variable") == [
        "CDR(ds_type)=Test-INT", "from_user=agent1", "companyID=Test"]
    assert status.get("variable") == "CDR(ds_type)=Test-INT"
    assert status.action_id == "st-2"


def test_originate_with_repeated_variables_serialises_one_line_each(cases_dir: Path) -> None:
    expected = case_blocks(cases_dir, "06")[2][0]

    data = build_action("Originate", "cb-7", [
        ("Channel", "Local/101@from-internal"), ("Context", "from-internal"),
        ("Exten", "5550000001"), ("Priority", 1), ("Async", True),
        ("Variable", ["CRM_CALL_ID=abc-123", "CRM_CONTACT_ID=42", "__CRM_USER=agent1"]),
    ])

    assert data == expected


@pytest.mark.parametrize("headers", [
    {"Variable": "a=1\r\nVariable: b=2"},
    {"Variable": ["ok=1", "b=2\nAction: Hangup"]},
    {"Channel": "Local/1@x\r"},
    {"Bad: Key": "v"},
    {"Two Words": "v"},
    {"": "v"},
    {"actionid": "mine"},
], ids=["crlf-in-value", "lf-in-list-item", "cr-in-value", "colon-in-key", "space-in-key",
        "empty-key", "actionid-as-header"])
def test_build_action_rejects_header_injection_and_bad_names(headers: dict) -> None:
    with pytest.raises(AmiProtocolError) as err:
        build_action("Originate", "cb-1", headers)

    assert repr(next(iter(headers))) in str(err.value)


def test_build_action_rejects_line_break_in_action_id() -> None:
    with pytest.raises(AmiProtocolError, match="ActionID"):
        build_action("Ping", "x\r\nAction: Hangup")


@pytest.mark.parametrize("trace", [t.name for t in TRACES])
def test_every_recorded_action_is_rebuilt_byte_for_byte(traces_dir: Path, trace: str) -> None:
    entries = [json.loads(line) for line in
               (traces_dir / trace.replace(".raw", ".jsonl")).read_text().splitlines()]
    actions = [e for e in entries if e["dir"] == "out"]

    rebuilt = b""
    for entry in actions:
        headers = entry["headers"]
        assert [k for k, _ in headers[:2]] == ["Action", "ActionID"]
        rebuilt += build_action(headers[0][1], headers[1][1], [tuple(h) for h in headers[2:]])

    assert actions
    assert rebuilt == (traces_dir / trace.replace(".raw", ".sent")).read_bytes()


# --- case 07: banner and header case ---------------------------------------------------


def test_banner_is_recorded_and_never_handed_out_as_a_message(cases_dir: Path) -> None:
    (banner,), stream = case_blocks(cases_dir, "07")
    parser = Parser()

    messages = feed_all(parser, [banner, *stream])

    assert parser.banner == "Asterisk Call Manager/9.0.0"
    assert [(m.kind, m.name) for m in messages] == [
        (Kind.RESPONSE, "Success"), (Kind.EVENT, "FullyBooted"), (Kind.EVENT, "CEL"),
        (Kind.EVENT, "Newchannel")]
    assert messages[0].action_id == "login-1"
    cel, newchannel = messages[2], messages[3]
    # CEL spells UniqueID/LinkedID/CallerIDnum, Newchannel Uniqueid/Linkedid/CallerIDNum
    for key in ("Uniqueid", "Linkedid"):
        assert cel[key] == newchannel[key] == "1700000000.1"
    assert cel["CallerIDNum"] == newchannel["callerIDnum"] == "5550000001"
    assert ("UniqueID", "1700000000.1") in cel.pairs  # original spelling kept


@pytest.mark.parametrize("segments", [
    [b"Asterisk Call Manager/1.1\r\n"],
    [b"Asterisk Call Manager/2.10.6\r\n"],
    [b"Asterisk Call Man", b"ager/2.10.0\r\n"],
    one_byte(b"Asterisk Call Manager/11.0.0\r\n"),
])
def test_any_banner_version_is_accepted_even_split(segments: list[bytes]) -> None:
    parser = Parser()
    reply = b"Response: Success\r\nActionID: login-1\r\nMessage: Authentication accepted\r\n\r\n"

    messages = feed_all(parser, [*segments, reply])

    assert parser.banner == b"".join(segments).decode().rstrip("\r\n")
    assert [m.action_id for m in messages] == ["login-1"]


def test_unknown_banner_prefix_is_kept_with_a_warning(caplog) -> None:
    parser = Parser()

    with caplog.at_level(logging.WARNING, logger="cti.ami.protocol"):
        messages = parser.feed(b"astmanproxy 2.0\r\nEvent: FullyBooted\r\n\r\n")

    assert parser.banner == "astmanproxy 2.0"
    assert [m.name for m in messages] == ["FullyBooted"]
    assert "unexpected AMI banner" in caplog.text


def test_stream_without_banner_parses_its_first_line_as_a_header() -> None:
    parser = Parser()

    messages = parser.feed(b"Event: FullyBooted\r\nStatus: Fully Booted\r\n\r\n")

    assert parser.banner is None
    assert [m.name for m in messages] == ["FullyBooted"]


# --- case 10 (parsing half): an event carrying Response: is an event --------------------


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-read", "1-byte-reads"])
def test_originate_response_is_an_event_and_a_reply_without_actionid_a_response(
        cases_dir: Path, bytewise: bool) -> None:
    replies = b"".join(case_blocks(cases_dir, "10")[1])
    replies = replies.replace(b"<id1>", b"inst-1").replace(b"<id2>", b"inst-2")

    messages = parse(replies, bytewise=bytewise)

    assert [(m.kind, m.name, m.action_id) for m in messages] == [
        (Kind.RESPONSE, "Success", "inst-2"),
        (Kind.RESPONSE, "Success", "inst-1"),
        (Kind.EVENT, "OriginateResponse", "inst-2"),
        (Kind.EVENT, "OriginateResponse", "inst-1"),
        (Kind.RESPONSE, "Success", None),
    ]
    assert [m["Response"] for m in messages[2:4]] == ["Failure", "Success"]
    assert messages[2]["Reason"] == "5"


def test_event_header_after_response_header_still_makes_an_event() -> None:
    [msg] = parse(b"Response: Failure\r\nEvent: OriginateResponse\r\nActionID: a-1\r\n\r\n")
    built = Message.from_pairs([("Response", "Success"), ("Event", "OriginateResponse")])

    assert (msg.kind, msg.name) == (Kind.EVENT, "OriginateResponse")
    assert (built.kind, built.name) == (Kind.EVENT, "OriginateResponse")


# --- empty values ----------------------------------------------------------------------


@pytest.mark.parametrize("value, empty", [
    (None, True), ("", True), ("<unknown>", True), ("<null>", True), ("<none>", True),
    ("unknown", False), ("0", False), ("1700000000.1", False)])
def test_is_empty_value_knows_asterisks_spellings_of_nothing(value, empty) -> None:
    assert is_empty_value(value) is empty


# --- recorded sessions ------------------------------------------------------------------


@pytest.mark.parametrize("trace", [t.name for t in TRACES])
def test_recorded_session_in_random_reads_gives_the_recorded_messages(
        traces_dir: Path, trace: str) -> None:
    raw = (traces_dir / trace).read_bytes()
    entries = [json.loads(line) for line in
               (traces_dir / trace.replace(".raw", ".jsonl")).read_text().splitlines()]
    incoming = [e for e in entries if e["dir"] == "in"]
    banner, expected = incoming[0], incoming[1:]
    assert banner["kind"] == "banner"
    rnd = random.Random(trace)  # reproducible, different per trace
    parser = Parser()
    messages: list[Message] = []
    pos = 0

    while pos < len(raw):
        size = rnd.choice([1, 2, 3, 7, 64, 1000, 1460, 4096, 65536])
        messages += parser.feed(raw[pos:pos + size])
        pos += size

    assert parser.banner == banner["name"]
    assert parser.buffered == 0 and parser.dropped == 0
    assert len(messages) == len(expected)
    for msg, entry in zip(messages, expected):
        got = (msg.kind.name.lower(), msg.name, [list(pair) for pair in msg.pairs])
        assert got == (entry["kind"], entry["name"], entry["headers"]), entry["seq"]
