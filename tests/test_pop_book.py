"""PopBook: who gets which screen pop. Pure function calls, no sockets.

Cases 12 (ring-all through Local channels) and 14 (blind transfer) are replayed
from their AMI text through a small stand-in for the tracker that produces the
CallUpdates the real tracker promises (agent legs only, Linkedid as call id).

The recorded Asterisk 22 traces are replayed through the real tracker
(:mod:`cti.calls.tracker`, owned by the call-tracking work) at the end.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cti.ami.protocol import Message, Parser
from cti.calls.model import AgentLeg, Call, CallState, CallUpdate, Change, LegState, Route
from cti.crm.base import Article, Customer, Interaction, LookupResult, Ticket
from cti.pops.book import PopBook

# --- helpers -----------------------------------------------------------------------


def case_events(cases_dir: Path, name: str) -> list[Message]:
    """The ``Event: ...\\r\\n`` lines of a case file, parsed by the project's AMI parser."""
    text = (cases_dir / name).read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("Event: ")]
    raw = "".join(ln.replace("\\r\\n", "\r\n") for ln in lines).encode()
    return Parser(expect_banner=False).feed(raw)


def device_agent(channel: str | None) -> str | None:
    """``PJSIP/101-00000006`` -> ``101``; Local plumbing and trunks -> None."""
    m = re.match(r"PJSIP/(\d+)-", channel or "")
    return m.group(1) if m else None


class StandInTracker:
    """Just enough of the tracker's contract to replay cases 12 and 14."""

    def __init__(self) -> None:
        self.call: Call | None = None
        self.legs: dict[str, AgentLeg] = {}

    def feed(self, msg: Message) -> list[CallUpdate]:
        name = msg.name
        if self.call is None and name in ("Newchannel", "BridgeEnter"):
            self.call = Call(call_id=msg["Linkedid"], started_at=1.0,
                             caller_num=msg.get("CallerIDNum"), caller_name=msg.get("CallerIDName"),
                             customer_channel=msg["Channel"], customer_uniqueid=msg["Uniqueid"])
            return [CallUpdate(Change.STARTED, self.call),
                    CallUpdate(Change.CALLER_KNOWN, self.call)]
        call = self.call
        assert call is not None
        if name == "DialBegin" and device_agent(msg.get("DestChannel")):
            leg = AgentLeg(agent=device_agent(msg["DestChannel"]), interface=msg["DestChannel"],
                           member_name=None, channel=msg["DestChannel"],
                           uniqueid=msg["DestUniqueid"], queue="sales", ring_at=2.0)
            self.legs[leg.uniqueid] = leg
            call.legs.append(leg)
            call.state = CallState.AGENT_RINGING
            return [CallUpdate(Change.AGENT_RINGING, call, leg)]
        if name == "DialEnd" and msg.get("DestUniqueid") in self.legs:
            leg = self.legs[msg["DestUniqueid"]]
            if msg["DialStatus"] == "ANSWER":
                leg.state, leg.answer_at = LegState.CONNECTED, 3.0
                call.state, call.agent = CallState.CONNECTED, leg.agent
                return [CallUpdate(Change.AGENT_CONNECTED, call, leg)]
            taken = any(lg.state is LegState.CONNECTED for lg in call.legs)
            leg.state = LegState.ANSWERED_ELSEWHERE if taken else LegState.CANCELLED
            return [CallUpdate(Change.AGENT_RING_ENDED, call, leg)]
        if name == "BridgeEnter" and device_agent(msg["Channel"]):
            leg = self.legs.get(msg["Uniqueid"])
            if leg is None:
                leg = AgentLeg(agent=device_agent(msg["Channel"]), interface=msg["Channel"],
                               member_name=None, channel=msg["Channel"],
                               uniqueid=msg["Uniqueid"], queue=None)
                self.legs[leg.uniqueid] = leg
                call.legs.append(leg)
            if leg.state is LegState.CONNECTED:
                return []
            leg.state = LegState.CONNECTED
            call.state, call.agent = CallState.CONNECTED, leg.agent
            return [CallUpdate(Change.AGENT_CONNECTED, call, leg)]
        if name == "BlindTransfer":
            leg = self.legs[msg["TransfererUniqueid"]]
            leg.state = LegState.TRANSFERRED
            call.state = CallState.TRANSFERRING
            return [CallUpdate(Change.TRANSFERRED, call, leg)]
        if name == "BridgeLeave" and msg["Uniqueid"] in self.legs:
            return [CallUpdate(Change.AGENT_DONE, call, self.legs[msg["Uniqueid"]])]
        return []


def replay(book: PopBook, events: list[Message]) -> list[tuple[str, dict]]:
    tracker = StandInTracker()
    out: list[tuple[str, dict]] = []
    for msg in events:
        for update in tracker.feed(msg):
            out += book.apply(update)
    return out


def make_call(call_id: str = "1700000000.1", number: str | None = "5550000001",
              name: str | None = "ACME Corp") -> Call:
    return Call(call_id=call_id, started_at=1.0, caller_num=number, caller_name=name,
                queue="sales", route=Route(queue="sales", priority=2, segment="gold",
                                           customer_id="CUST-1", reason="segment gold -> vip"))


def make_leg(agent: str, uniqueid: str, queue: str = "sales") -> AgentLeg:
    return AgentLeg(agent=agent, interface=f"PJSIP/{agent}", member_name=None,
                    channel=f"PJSIP/{agent}-0001", uniqueid=uniqueid, queue=queue, ring_at=2.0)


def customer(n_articles: int = 8) -> Customer:
    return Customer(
        customer_id="CUST-1", name="ACME Corp", segment="gold", tags=["vip", "churn_risk"],
        phones=["+15550000001"], company="ACME", products=["router"],
        history=[Interaction(at="2026-11-01T10:00:00Z", channel="call", direction="inbound",
                             summary="router drops wifi", outcome="ticket", agent="1001")],
        open_tickets=[Ticket(ticket_id="T-9", subject="wifi drops", status="open",
                             is_complaint=True, product="router",
                             created_at="2026-11-01T10:00:00Z", updated_at="2026-11-02T10:00:00Z")],
        articles=[Article(article_id=f"KB-{i}", product="router", title=f"Fix {i}")
                  for i in range(n_articles)])


def found() -> LookupResult:
    return LookupResult(number="+15550000001", matches=[customer()], status="found")


def of(pairs: list[tuple[str, dict]], agent: str) -> list[dict]:
    return [msg for who, msg in pairs if who == agent]


def kinds(msgs: list[dict]) -> list[tuple[str, str | None]]:
    return [(m["type"], m.get("update") or m.get("reason") or m.get("state")) for m in msgs]


# --- case replays ------------------------------------------------------------------


def test_case12_ring_all_pops_each_device_agent_once_and_withdraws_the_loser(cases_dir):
    book = PopBook()
    pairs = replay(book, case_events(cases_dir, "12-linkedid-local-channels-duplicate-pops.md"))

    assert {who for who, _ in pairs} == {"101", "102"}           # no pop for Local halves
    assert all(m["call_id"] == "1700000000.1" for _, m in pairs)  # Linkedid, not a Uniqueid
    assert kinds(of(pairs, "101")) == [("pop", "ringing"), ("pop_update", "connected")]
    assert kinds(of(pairs, "102")) == [("pop", "ringing"), ("pop_update", "answered_elsewhere"),
                                       ("pop_close", "answered_elsewhere")]
    assert book.snapshot("102")["pops"] == []
    assert [p["state"] for p in book.snapshot("101")["pops"]] == ["connected"]


def test_case14_blind_transfer_closes_old_pop_and_gives_new_agent_the_original_customer(
        cases_dir):
    book = PopBook()
    events = case_events(cases_dir, "14-transfers-wrong-agent.md")
    pairs = replay(book, events[:2])                  # customer bridged with 101
    assert kinds(of(pairs, "101")) == [("pop", "connected")]
    book.set_profile("1700000000.1", found())

    pairs = replay_rest(book, events)
    old, new = of(pairs, "101"), of(pairs, "102")
    assert kinds(old) == [("pop_update", "transferred"), ("pop_close", "transferred")]
    assert new[0]["type"] == "pop" and new[0]["state"] == "ringing"
    assert new[0]["call_id"] == "1700000000.1"
    assert new[0]["caller"] == {"number": "5550000001", "name": "ACME Corp", "withheld": False}
    assert new[0]["customer"]["customer_id"] == "CUST-1" and new[0]["match"] == "found"
    assert new[0]["transferred_from"] == "101"
    assert kinds(new[1:]) == [("pop_update", "connected")]
    assert book.open_pops("101") == 0 and book.open_pops("102") == 1


def replay_rest(book: PopBook, events: list[Message]) -> list[tuple[str, dict]]:
    """Replay all of ``events`` but return only what the events after the first two caused."""
    tracker = StandInTracker()
    out: list[tuple[str, dict]] = []
    for i, msg in enumerate(events):
        for update in tracker.feed(msg):
            pairs = book.apply(update)
            if i >= 2:
                out += pairs
    return out


# --- the rules, one by one -----------------------------------------------------------


def test_pop_goes_only_to_the_ringing_agent_never_to_others():
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.STARTED, call))
    pairs = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    assert [who for who, _ in pairs] == ["1001"]
    assert book.snapshot("1002")["pops"] == []


def test_leg_without_agent_gets_no_pop():
    book = PopBook()
    call = make_call()
    leg = make_leg("x", "u1")
    leg.agent = None
    assert book.apply(CallUpdate(Change.AGENT_RINGING, call, leg)) == []


def test_second_ringing_leg_for_same_agent_updates_the_pop_instead_of_a_second_one():
    book = PopBook()
    call = make_call()
    first = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1", "sales")))
    second = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u2", "vip")))
    again = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u2", "vip")))

    assert kinds(of(first, "1001")) == [("pop", "ringing")]
    assert kinds(of(second, "1001")) == [("pop_update", "ringing")]
    assert second[0][1]["queue"] == "vip"
    assert again == []                                 # the same leg repeated by AMI
    assert book.open_pops("1001") == 1


def test_pop_stays_open_while_another_leg_of_the_same_agent_still_rings():
    book = PopBook()
    call = make_call()
    leg1, leg2 = make_leg("1001", "u1"), make_leg("1001", "u2")
    book.apply(CallUpdate(Change.AGENT_RINGING, call, leg1))
    book.apply(CallUpdate(Change.AGENT_RINGING, call, leg2))
    leg1.state = LegState.NO_ANSWER
    assert book.apply(CallUpdate(Change.AGENT_RING_ENDED, call, leg1)) == []
    leg2.state = LegState.NO_ANSWER
    closed = book.apply(CallUpdate(Change.AGENT_RING_ENDED, call, leg2))
    assert kinds(of(closed, "1001")) == [("pop_update", "no_answer"), ("pop_close", "no_answer")]


def test_agent_answering_on_one_device_keeps_the_pop_when_the_other_device_stops_ringing():
    book = PopBook()
    call = make_call()
    desk, soft = make_leg("1001", "u1"), make_leg("1001", "u2")
    book.apply(CallUpdate(Change.AGENT_RINGING, call, desk))
    book.apply(CallUpdate(Change.AGENT_RINGING, call, soft))
    desk.state = LegState.CONNECTED
    book.apply(CallUpdate(Change.AGENT_CONNECTED, call, desk))
    soft.state = LegState.ANSWERED_ELSEWHERE
    assert book.apply(CallUpdate(Change.AGENT_RING_ENDED, call, soft)) == []
    assert [p["state"] for p in book.snapshot("1001")["pops"]] == ["connected"]


@pytest.mark.parametrize("leg_state", [LegState.NO_ANSWER, LegState.CANCELLED, LegState.BUSY])
def test_ring_end_without_answer_closes_the_pop_with_its_reason(leg_state):
    book = PopBook()
    call = make_call()
    leg = make_leg("1001", "u1")
    book.apply(CallUpdate(Change.AGENT_RINGING, call, leg))
    leg.state = leg_state
    pairs = book.apply(CallUpdate(Change.AGENT_RING_ENDED, call, leg))
    assert kinds(of(pairs, "1001")) == [("pop_update", leg_state.value),
                                        ("pop_close", leg_state.value)]


def test_agent_rung_again_after_no_answer_gets_a_fresh_pop_with_a_higher_version():
    book = PopBook()
    call = make_call()
    leg = make_leg("1001", "u1")
    opened = book.apply(CallUpdate(Change.AGENT_RINGING, call, leg))
    leg.state = LegState.NO_ANSWER
    closed = book.apply(CallUpdate(Change.AGENT_RING_ENDED, call, leg))
    again = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u9")))
    assert again[0][1]["type"] == "pop"
    assert again[0][1]["version"] > closed[-1][1]["version"] > opened[0][1]["version"]


def test_profile_arriving_late_updates_every_open_pop_in_place():
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.CALLER_KNOWN, call))
    first = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1002", "u2")))
    assert first[0][1]["match"] == "pending" and first[0][1]["customer"] is None

    pairs = book.set_profile(call.call_id, found())

    assert sorted(who for who, _ in pairs) == ["1001", "1002"]
    msg = of(pairs, "1001")[0]
    assert (msg["type"], msg["update"], msg["state"]) == ("pop_update", "profile", "ringing")
    assert msg["customer"]["name"] == "ACME Corp" and msg["match"] == "found"
    assert msg["flags"] == {"open_complaint": True, "unresolved": True, "vip": True,
                            "churn_risk": True, "complainer": False}
    assert [t["ticket_id"] for t in msg["open_tickets"]] == ["T-9"]
    assert msg["history"][0]["summary"] == "router drops wifi"
    assert len(msg["articles"]) == 5                   # capped at articles_per_pop
    assert "history" not in msg["customer"]            # promoted, not sent twice
    snap = book.snapshot("1001")["pops"][0]
    assert snap["customer"]["customer_id"] == "CUST-1" and snap["version"] == msg["version"]


def test_profile_known_before_ringing_is_in_the_first_pop():
    book = PopBook(articles_per_pop=2)
    call = make_call()
    book.apply(CallUpdate(Change.CALLER_KNOWN, call))
    assert book.set_profile(call.call_id, found()) == []      # nobody holds a pop yet
    pairs = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    pop = pairs[0][1]
    assert pop["match"] == "found" and len(pop["articles"]) == 2
    assert pop["route"] == {"queue": "sales", "priority": 2, "segment": "gold",
                            "reason": "segment gold -> vip"}


def test_ambiguous_number_lists_candidates_and_picks_no_customer():
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    other = customer()
    other.customer_id, other.name = "CUST-2", "ACME Branch"
    pairs = book.set_profile(call.call_id, LookupResult(number="+15550000001",
                                                         matches=[customer(), other],
                                                         status="ambiguous"))
    msg = pairs[0][1]
    assert msg["match"] == "ambiguous" and msg["customer"] is None
    assert [c["customer_id"] for c in msg["candidates"]] == ["CUST-1", "CUST-2"]
    assert msg["history"] == [] and msg["open_tickets"] == []


@pytest.mark.parametrize("status,match", [("not_found", "not_found"), ("error", "error"),
                                          ("timeout", "error")])
def test_lookup_without_a_match_sets_the_match_status(status, match):
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    pairs = book.set_profile(call.call_id, LookupResult(number="+15550000001", status=status))
    assert pairs[0][1]["match"] == match


def test_failed_lookup_reported_as_none_shows_error():
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    assert book.set_profile(call.call_id, None)[0][1]["match"] == "error"


@pytest.mark.parametrize("number", [None, "", "anonymous", "<unknown>", "INTERNATIONAL"])
def test_withheld_caller_pops_with_match_status_withheld(number):
    book = PopBook()
    call = make_call(number=number, name="Anonymous")
    pairs = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    pop = pairs[0][1]
    assert pop["match"] == "withheld"
    assert pop["caller"] == {"number": None, "name": None, "withheld": True}


def test_caller_number_arriving_late_updates_the_pop_and_waits_for_a_new_lookup():
    # Case 15: DAHDI Newchannel with an empty number, NewCallerid 2 s later.
    book = PopBook()
    call = make_call(call_id="1700000000.84", number="", name="")
    book.apply(CallUpdate(Change.STARTED, call))
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    call.caller_num = "5550000001"
    pairs = book.apply(CallUpdate(Change.CALLER_KNOWN, call))
    msg = pairs[0][1]
    assert (msg["type"], msg["update"]) == ("pop_update", "caller")
    assert msg["call_id"] == "1700000000.84"
    assert msg["caller"]["number"] == "5550000001" and msg["match"] == "pending"


def test_call_end_closes_every_pop_and_snapshot_is_empty_afterwards():
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1002", "u2")))
    call.state = CallState.ENDED
    pairs = book.apply(CallUpdate(Change.ENDED, call))

    for agent in ("1001", "1002"):
        assert kinds(of(pairs, agent)) == [("pop_update", "ended"), ("pop_close", "ended")]
        assert book.snapshot(agent)["pops"] == []
    assert book.live_calls == 0 and book.open_pops() == 0
    # Late notes about the finished call neither reopen a pop nor keep state.
    assert book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1003", "u3"))) == []
    assert book.set_profile(call.call_id, found()) == []
    assert book.live_calls == 0


def test_agent_hanging_up_closes_only_that_agents_pop():
    book = PopBook()
    call = make_call()
    leg = make_leg("1001", "u1")
    book.apply(CallUpdate(Change.AGENT_CONNECTED, call, leg))
    leg.state = LegState.COMPLETED
    pairs = book.apply(CallUpdate(Change.AGENT_DONE, call, leg))
    assert kinds(of(pairs, "1001")) == [("pop_update", "ended"), ("pop_close", "ended")]
    assert book.live_calls == 1                        # the call itself goes on


def test_transfer_without_a_named_leg_closes_the_agent_whose_leg_left():
    book = PopBook()
    call = make_call()
    leg = make_leg("1001", "u1")
    call.legs.append(leg)
    leg.state = LegState.CONNECTED
    book.apply(CallUpdate(Change.AGENT_CONNECTED, call, leg))
    leg.state = LegState.TRANSFERRED
    pairs = book.apply(CallUpdate(Change.TRANSFERRED, call))
    assert kinds(of(pairs, "1001")) == [("pop_update", "transferred"), ("pop_close", "transferred")]
    new = book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1004", "u4")))
    assert new[0][1]["transferred_from"] == "1001"


def test_forget_closes_open_pops_as_expired():
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg("1001", "u1")))
    pairs = book.forget(call.call_id)
    assert kinds(of(pairs, "1001")) == [("pop_update", "expired"), ("pop_close", "expired")]
    assert book.live_calls == 0 and book.forget(call.call_id) == []


def test_seq_per_agent_and_version_per_call_only_grow():
    book = PopBook()
    a, b = make_call("L1"), make_call("L2")
    legs = {k: make_leg(k[0], k) for k in ("1a", "2a", "1b")}
    out = []
    out += book.apply(CallUpdate(Change.AGENT_RINGING, a, legs["1a"]))
    out += book.apply(CallUpdate(Change.AGENT_RINGING, a, legs["2a"]))
    out += book.apply(CallUpdate(Change.AGENT_RINGING, b, legs["1b"]))
    out += book.set_profile("L1", found())
    legs["1a"].state = LegState.CONNECTED
    out += book.apply(CallUpdate(Change.AGENT_CONNECTED, a, legs["1a"]))
    legs["2a"].state = LegState.ANSWERED_ELSEWHERE
    out += book.apply(CallUpdate(Change.AGENT_RING_ENDED, a, legs["2a"]))
    b.state = CallState.ENDED
    out += book.apply(CallUpdate(Change.ENDED, b))

    for agent in ("1", "2"):
        seqs = [m["seq"] for m in of(out, agent)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert book.current_seq(agent) == seqs[-1]
    for call_id in ("L1", "L2"):
        versions = [m["version"] for _, m in out if m["call_id"] == call_id]
        assert versions == sorted(versions) and versions[0] >= 1
    # Each change gets its own version; a change's update and close share it.
    closing = [m for m in of(out, "2") if m["call_id"] == "L1"][-2:]
    assert closing[0]["version"] == closing[1]["version"]
    assert book.snapshot("1")["seq"] == book.current_seq("1")


def test_ring_all_pops_share_one_body_built_once():
    book = PopBook()
    call = make_call()
    book.apply(CallUpdate(Change.CALLER_KNOWN, call))
    book.set_profile(call.call_id, found())
    pops = [book.apply(CallUpdate(Change.AGENT_RINGING, call, make_leg(str(1000 + i), f"u{i}")))
            [0][1] for i in range(20)]
    assert len({p["seq"] for p in pops}) == 1          # each agent's own first message
    assert all(p["history"] is pops[0]["history"] for p in pops)
    assert all(p["customer"] is pops[0]["customer"] for p in pops)


# --- real traces through the real tracker ---------------------------------------------


def trace_pops(traces_dir: Path, name: str) -> tuple[PopBook, list[tuple[str, dict]]]:
    tracker_mod = pytest.importorskip("cti.calls.tracker")
    from cti.calls.agents import AgentDirectory
    from cti.config import Settings

    settings = Settings()
    tracker = tracker_mod.CallTracker(AgentDirectory.from_settings(settings.agents),
                                      settings.calls.outbound_contexts)
    book = PopBook()
    out: list[tuple[str, dict]] = []
    for line in (traces_dir / f"{name}.ami.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["dir"] == "in" and rec["kind"] == "event":
            msg = Message.from_pairs([tuple(h) for h in rec["headers"]])
            for update in tracker.handle(msg, rec["t"]):
                out += book.apply(update)
    return book, out


def test_trace_blind_transfer_moves_the_pop_with_the_original_caller(traces_dir):
    book, pairs = trace_pops(traces_dir, "blind_transfer")
    first, second = of(pairs, "1001"), of(pairs, "1004")

    assert {who for who, _ in pairs} == {"1001", "1004"}
    assert kinds(first) == [("pop", "ringing"), ("pop_update", "connected"),
                            ("pop_update", "transferred"), ("pop_close", "transferred")]
    assert kinds(second) == [("pop", "ringing"), ("pop_update", "connected"),
                             ("pop_update", "ended"), ("pop_close", "ended")]
    assert second[0]["call_id"] == first[0]["call_id"]
    assert second[0]["caller"] == first[0]["caller"]
    # The customer as the dialplan saw it (the FastAGI env of the same recording).
    env = dict(ln.split(": ", 1) for ln in (traces_dir / "blind_transfer.agi.raw").read_text()
               .splitlines() if ln.startswith("agi_caller"))
    assert second[0]["caller"] == {"number": env["agi_callerid"],
                                   "name": env["agi_calleridname"], "withheld": False}
    assert second[0]["transferred_from"] == "1001"
    assert book.open_pops() == 0 and book.live_calls == 0


def test_trace_burst_gives_one_pop_per_agent_and_call_and_closes_them_all(traces_dir):
    book, pairs = trace_pops(traces_dir, "burst")
    open_now: set[tuple[str, str]] = set()
    for agent, msg in pairs:
        key = (agent, msg["call_id"])
        if msg["type"] == "pop":
            assert key not in open_now, f"second pop for {key}"
            open_now.add(key)
        elif msg["type"] == "pop_close":
            open_now.remove(key)
        else:
            assert key in open_now, f"update for a closed pop {key}"
    assert open_now == set() and book.open_pops() == 0 and book.live_calls == 0
    assert len({m["call_id"] for _, m in pairs if m["type"] == "pop_update"
                and m["update"] == "connected"}) == 20
    for agent in {who for who, _ in pairs}:
        seqs = [m["seq"] for m in of(pairs, agent)]
        assert seqs == list(range(1, len(seqs) + 1))
