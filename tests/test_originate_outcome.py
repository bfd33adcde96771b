"""Case 11 (and the outcome half of case 10): what an Originate's result means."""

from __future__ import annotations

from pathlib import Path

import pytest
from casefiles import case_blocks

from cti.ami.protocol import Parser
from cti.callbacks.originate import OriginateOutcome, from_event, from_reply, timed_out


def messages(data: bytes) -> list:
    return Parser(expect_banner=False).feed(data)


def test_case_11_reason_codes_map_to_callback_outcomes(cases_dir: Path) -> None:
    [lines] = case_blocks(cases_dir, "11")
    data = b"".join(lines)
    results = {r.action_id: r for r in map(from_event, messages(data))}
    assert {k: v.outcome for k, v in results.items()} == {
        "cb-1": OriginateOutcome.AGENT_ANSWERED, "cb-2": OriginateOutcome.NO_ANSWER,
        "cb-3": OriginateOutcome.BUSY, "cb-4": OriginateOutcome.CONGESTION,
        "cb-5": OriginateOutcome.FAILED_UNREACHABLE, "cb-6": OriginateOutcome.FAILED_HANGUP,
    }
    assert results["cb-1"].uniqueid == "1700000000.12"
    assert results["cb-2"].uniqueid is None  # "<null>" is no value
    assert results["cb-5"].reason == 0


def test_case_10_reversed_originate_results_keep_their_own_outcomes(cases_dir: Path) -> None:
    data = b"".join(case_blocks(cases_dir, "10")[1])
    data = data.replace(b"<id1>", b"a-1").replace(b"<id2>", b"a-2")
    events = [m for m in messages(data) if m.name == "OriginateResponse"]
    outcomes = {r.action_id: r.outcome for r in map(from_event, events)}
    assert outcomes == {"a-2": OriginateOutcome.BUSY, "a-1": OriginateOutcome.AGENT_ANSWERED}


def test_failure_wins_over_a_reason_that_looks_like_success() -> None:
    [msg] = messages(b"Event: OriginateResponse\r\nActionID: x\r\nResponse: Failure\r\n"
                     b"Reason: 4\r\nUniqueid: <unknown>\r\n\r\n")
    assert from_event(msg).outcome is OriginateOutcome.FAILED_OTHER


def test_recorded_callback_failures_from_asterisk_22(traces_dir: Path) -> None:
    data = (traces_dir / "callback_failed.ami.raw").read_bytes()
    msgs = Parser().feed(data)
    events = {r.action_id: r for r in
              (from_event(m) for m in msgs if m.name == "OriginateResponse")}
    assert events["cb-busy-1"].outcome is OriginateOutcome.BUSY
    assert events["cb-noanswer-1"].outcome is OriginateOutcome.NO_ANSWER
    assert events["cb-nocontext-1"].outcome is OriginateOutcome.FAILED_UNREACHABLE
    assert events["cb-badtech-1"].outcome is OriginateOutcome.FAILED_UNREACHABLE
    assert all(e.uniqueid is None for e in events.values())
    [sync] = [m for m in msgs if m.get("ActionID") == "cb-busy-sync-1"]
    refused = from_reply(sync)
    assert refused is not None and refused.outcome is OriginateOutcome.FAILED_INVALID_CHANNEL
    assert refused.message == "Originate failed"


def test_recorded_answered_callbacks_give_the_call_id(traces_dir: Path) -> None:
    msgs = Parser().feed((traces_dir / "callback_answered.ami.raw").read_bytes())
    results = [from_event(m) for m in msgs if m.name == "OriginateResponse"]
    assert [(r.outcome, r.uniqueid) for r in results] == [
        (OriginateOutcome.AGENT_ANSWERED, "1796302682.26"),
        (OriginateOutcome.AGENT_ANSWERED, "cti-cb-0002")]
    queued = [m for m in msgs if m.name == "Success" and m.get("ActionID") == "cb-ok-1"]
    assert from_reply(queued[0]) is None


def test_retry_rules_and_timeout() -> None:
    assert OriginateOutcome.BUSY.retryable and OriginateOutcome.NO_ANSWER.retryable
    assert not OriginateOutcome.FAILED_INVALID_CHANNEL.retryable
    assert timed_out("cb-9").outcome is OriginateOutcome.TIMEOUT


def test_a_response_is_not_an_originate_event() -> None:
    [msg] = messages(b"Response: Success\r\nActionID: x\r\nMessage: Originate successfully "
                     b"queued\r\n\r\n")
    with pytest.raises(ValueError, match="expected an OriginateResponse"):
        from_event(msg)
