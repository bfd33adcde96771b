"""Turn the recorded Asterisk 22 traces into the simulator's call templates.

Run it from the repository root when the traces change::

    python -m cti.sim.make_templates [--traces ../shared/traces] \
        [--out cti/sim/templates/lab22.json]

The output is committed: the simulator must work without ``shared/``.

What it does, per scenario (see :data:`SPECS`):

1. picks one call out of a trace: every event that names the call's Linkedid, one of
   its channels or Uniqueids, plus the DeviceStateChange / QueueMemberStatus /
   BridgeCreate / BridgeDestroy events that belong to it;
2. replaces every concrete value that differs between calls by a ``%{name}``
   placeholder: channel names and Uniqueids become ``%{ch:C2}`` / ``%{uid:C2}``
   (roles C1/C2 for the caller's Local pair, ``a<k>.1``/``a<k>.2`` for the k-th
   agent pair rung), the caller, DID, queues, agents and bridges get names, and
   fields that depend on time (CEL EventTime, Cdr times, HoldTime, TalkTime,
   RingTime, QUEUEWAIT ...) become ``%{=...}`` expressions the builder computes;
3. cuts the timeline at every pause longer than 0.2 s and labels each pause
   (``ring``, ``talk`` ...) so the builder can stretch it;
4. compresses the channel snapshot (the 14 headers Channel ... Linkedid that
   Asterisk repeats in most events) to one row, and drops the Event/Privilege
   headers (Privilege goes to a per-event table).

Nothing here is imported by the simulator at run time.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cti.sim.events import CEL_KEYS, SNAPSHOT_KEYS, STATE_DESC

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TRACES = REPO.parent / "shared" / "traces"
DEFAULT_OUT = Path(__file__).resolve().parent / "templates" / "lab22.json"

GAP = 0.2           # a pause longer than this (seconds) is a labelled timeline cut
AUX_WINDOW = 0.0015  # aux events (device/member state) this close to the call's own


@dataclass
class Spec:
    name: str
    trace: str
    gaps: list[str]
    linkedid: str | None = None          # None: the trace holds one call only
    action_id: str | None = None         # the Originate whose OriginateResponse is ours
    queues: list[str] = field(default_factory=list)    # queue, queue2 in call order
    extra: dict[str, str] = field(default_factory=dict)  # literal -> placeholder


SPECS = [
    Spec("inbound_answered", "inbound_answered", ["agi", "ring", "settle", "talk"],
         queues=["vip"]),
    Spec("inbound_abandoned", "inbound_abandoned", ["agi", "hold"], queues=["general"]),
    Spec("inbound_no_agi", "inbound_no_agi", ["agi", "ring", "settle", "talk"],
         queues=["general"]),
    Spec("blind_transfer", "blind_transfer",
         ["agi", "ring", "settle", "talk1", "ring2", "settle", "talk"],
         queues=["vip", "supervisor"]),
    Spec("ring_no_answer", "burst", ["agi", "rna", "retry", "ring", "settle", "talk"],
         linkedid="1796302757.72", action_id="burst-01", queues=["complaints"]),
    Spec("callback_answered", "callback_answered", ["cb_ring", "ring", "settle", "cb_talk"],
         linkedid="1796302682.26", action_id="cb-ok-1",
         extra={"CB-42": "%{callback_id}"}),
    Spec("callback_busy", "callback_failed", [], linkedid="1796302693.34",
         action_id="cb-busy-1", extra={"CB-43": "%{callback_id}"}),
    Spec("callback_noanswer", "callback_failed", ["originate_timeout"],
         linkedid="1796302693.36", action_id="cb-noanswer-1",
         extra={"CB-44": "%{callback_id}"}),
    Spec("originate_no_context", "callback_failed", [], linkedid="1796302698.38",
         action_id="cb-nocontext-1"),
]

# Dialplan Wait() lengths that are scenario parameters: (context, priority) -> placeholder
WAIT_PARAMS = {
    ("caller-sim", "2"): "%{hold_s}",
    ("agents", "5"): "%{ring_s}",
    ("agents", "7"): "%{talk_s}",
    ("callbacks", "6"): "%{talk_s}",
}
# Originate variables that carry the same parameters
VAR_PARAMS = {"CALLER_HOLD": "%{hold_s}", "__AGENT_TALK": "%{talk_s}",
              "AGENT_TALK": "%{talk_s}", "CALLBACK_TALK": "%{talk_s}"}
# VarSet values Asterisk computes from the clock
VAR_CLOCK = {
    "QEHOLDTIME": "%{=holdtime}", "QUEUEWAIT": "%{=holdtime}",
    "QUEUEWAIT_MS": "%{=holdtime_ms}",
    "DIALEDTIME": "%{=dialed:C2}", "DIALEDTIME_MS": "%{=dialed_ms:C2}",
    "ANSWEREDTIME": "%{=answered}", "ANSWEREDTIME_MS": "%{=answered_ms}",
}


def load(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r["dir"] == "in" and r["kind"] == "event"]


def first(headers: list[list[str]], key: str) -> str | None:
    key = key.lower()
    for k, v in headers:
        if k.lower() == key:
            return v
    return None


def select(spec: Spec, events: list[dict]) -> list[dict]:
    """The events of one call, in trace order."""
    events = [e for e in events if e["name"] not in ("FullyBooted", "SuccessfulAuth")]
    if spec.linkedid is None:
        return events
    lid = spec.linkedid
    chans: set[str] = set()
    uids: set[str] = {lid}
    for e in events:
        if any(k.lower().endswith("linkedid") and v == lid for k, v in e["headers"]):
            for k, v in e["headers"]:
                kl = k.lower()
                if kl.endswith("channel") and v:
                    chans.add(v)
                if kl.endswith("uniqueid") and v:
                    uids.add(v)
    own, aux = [], []
    for i, e in enumerate(events):
        h = e["headers"]
        if e["name"] == "OriginateResponse":
            if first(h, "ActionID") == spec.action_id:
                own.append(i)
            continue
        if e["name"] in ("DeviceStateChange", "QueueMemberStatus", "BridgeCreate",
                         "BridgeDestroy"):
            aux.append(i)
            continue
        if any((k.lower().endswith("linkedid") and v == lid)
               or (k.lower().endswith("uniqueid") and v in uids)
               or (k.lower() in ("channel", "destchannel") and v in chans) for k, v in h):
            own.append(i)
    bridges = {first(events[i]["headers"], "BridgeUniqueid") for i in own} - {None}
    devices = {c.rsplit("-", 1)[0] for c in chans}
    ifaces = {c.split("@")[0] + "@agents/n" for c in chans if "@agents-" in c}
    queues = {"Queue:" + q for q in spec.queues}
    times = sorted(events[i]["t"] for i in own)
    picked = set(own)
    for i in aux:
        e = events[i]
        t = e["t"]
        if not any(abs(t - x) <= AUX_WINDOW for x in _near(times, t)):
            continue
        h = e["headers"]
        if e["name"] == "DeviceStateChange" and (first(h, "Device") in devices
                                                  or first(h, "Device") in queues):
            picked.add(i)
        elif e["name"] == "QueueMemberStatus" and first(h, "Interface") in ifaces:
            picked.add(i)
        elif e["name"].startswith("Bridge") and first(h, "BridgeUniqueid") in bridges:
            picked.add(i)
    return [events[i] for i in sorted(picked)]


def _near(times: list[float], t: float) -> Iterable[float]:
    i = bisect.bisect_left(times, t)
    return times[max(0, i - 1):i + 1]


class Templater:
    """Concrete values of one call -> placeholders."""

    def __init__(self, spec: Spec, events: list[dict]) -> None:
        self.spec = spec
        self.roles: dict[str, str] = {}     # channel name -> role
        self.uids: dict[str, str] = {}      # uniqueid -> role
        self.slots: list[dict[str, str]] = []
        self.params: dict[str, str] = {}
        self._discover(events)
        self._subs = self._substitutions(events)

    def _discover(self, events: list[dict]) -> None:
        agent_pairs: dict[str, int] = {}
        for e in events:
            h = e["headers"]
            for k, v in h:
                if not k.lower().endswith("channel") or not re.search(r"-[0-9a-f]{8};[12]$", v):
                    continue
                if v in self.roles:
                    continue
                base, leg = v[:-2], v[-1]
                if "@agents-" in v:
                    slot = agent_pairs.setdefault(base, len(agent_pairs))
                    role = f"a{slot}.{leg}"
                else:
                    role = f"C{leg}"
                self.roles[v] = role
            if e["name"] in ("Newchannel",):
                self.uids[first(h, "Uniqueid")] = self.roles[first(h, "Channel")]
            if e["name"] == "AgentCalled":
                dest = first(h, "DestChannel")
                slot = int(self.roles[dest][1:].split(".")[0])
                while len(self.slots) <= slot:
                    self.slots.append({})
                self.slots[slot] = {"id": first(h, "Interface").split("@")[0][6:],
                                    "name": first(h, "MemberName"),
                                    "queue": first(h, "Queue")}
            if e["name"] == "VarSet" and first(h, "Variable") in VAR_PARAMS:
                self.params[first(h, "Variable").lstrip("_")] = first(h, "Value")
        # agent pairs dialled without a queue (callback-agent): slot from the channel
        for chan, role in self.roles.items():
            if role.startswith("a"):
                slot = int(role[1:].split(".")[0])
                while len(self.slots) <= slot:
                    self.slots.append({})
                self.slots[slot].setdefault("id", chan.split("@")[0][6:])

    def _substitutions(self, events: list[dict]) -> list[tuple[re.Pattern[str], str]]:
        subs: dict[str, str] = {}
        boundary: dict[str, str] = {}
        for chan, role in self.roles.items():
            subs[chan] = f"%{{ch:{role}}}"
        for uid, role in self.uids.items():
            boundary[uid] = f"%{{uid:{role}}}"
        for e in events:
            h = e["headers"]
            if e["name"] == "Newchannel" and self.roles.get(first(h, "Channel")) == "C1":
                exten, ctx = first(h, "Exten"), first(h, "Context")
                self.params.update(exten=exten, context=ctx)
            if e["name"] == "NewCallerid" and self.roles.get(first(h, "Channel")) == "C1":
                self.params.update(cnum=first(h, "CallerIDNum"), cname=first(h, "CallerIDName"))
            if e["name"] == "BridgeCreate":
                n = sum(1 for v in subs.values() if v.startswith("%{bridge"))
                subs[first(h, "BridgeUniqueid")] = f"%{{bridge{n + 1}}}"
        cnum, cname = self.params.get("cnum"), self.params.get("cname")
        if cnum and cnum != "<unknown>":
            subs[cnum] = "%{cnum}"
        if cname and cname != "<unknown>":
            subs[cname] = "%{cname}"
        exten = self.params["exten"]
        # the dialled number: a DID on from-pstn, the customer's number on callbacks
        boundary[exten] = "%{did}" if self.params["context"] == "from-pstn" else "%{number}"
        for i, q in enumerate(self.spec.queues):
            boundary[q] = "%{queue}" if i == 0 else "%{queue2}"
        for k, slot in enumerate(self.slots):
            if "name" in slot:
                subs[slot["name"]] = f"%{{a{k}.name}}"
            boundary[slot["id"]] = f"%{{a{k}.id}}"
        subs["agi://127.0.0.1:4573/route"] = "%{agi_url}"
        subs.update(self.spec.extra)
        pats = [(re.compile(re.escape(k)), v) for k, v in subs.items()]
        pats += [(re.compile(r"(?<![\w.+-])" + re.escape(k) + r"(?![\w-])"), v)
                 for k, v in boundary.items()]
        pats.sort(key=lambda p: -len(p[0].pattern))
        return pats

    def value(self, value: str) -> str:
        if "%{" in value:
            raise SystemExit(f"trace value already holds a placeholder: {value!r}")
        for pat, rep in self._subs:
            if pat.search(value):
                value = pat.sub(lambda _m, rep=rep: rep, value)
        return value

    def role(self, chan: str) -> str | None:
        return self.roles.get(chan)


def templated_headers(t: Templater, e: dict) -> list[list[str]]:
    """Headers after Event/Privilege, with placeholders and clock expressions."""
    name = e["name"]
    h = [list(kv) for kv in e["headers"][2:]]
    get = {k.lower(): v for k, v in reversed(h)}
    out: list[list[str]] = []
    for k, v in h:
        kl = k.lower()
        if name == "CEL" and k == "EventTime":
            out.append([k, "%{=time}"])
            continue
        if name == "Cdr" and k in ("StartTime", "AnswerTime", "EndTime", "Duration",
                                   "BillableSeconds"):
            role = t.role(get["channel"])
            expr = {"StartTime": "cdr_start", "AnswerTime": "cdr_answer", "EndTime": "time",
                    "Duration": "cdr_duration", "BillableSeconds": "cdr_billsec"}[k]
            out.append([k, f"%{{={expr}:{role}}}" if expr != "time" else "%{=time}"])
            continue
        if name in ("AgentConnect", "AgentComplete", "QueueCallerAbandon") and k == "HoldTime":
            out.append([k, "%{=holdtime}"])
            continue
        if name == "AgentConnect" and k == "RingTime":
            slot = t.role(get["destchannel"]).split(".")[0]
            out.append([k, f"%{{=ringtime:{slot}}}"])
            continue
        if name == "AgentComplete" and k == "TalkTime":
            out.append([k, "%{=talktime}"])
            continue
        if name == "AgentRingNoAnswer" and k == "RingTime":
            slot = t.role(get["destchannel"]).split(".")[0]
            out.append([k, f"%{{=ringtime_ms:{slot}}}"])
            continue
        if name == "QueueMemberStatus" and k == "LoginTime":
            out.append([k, "%{login_time}"])
            continue
        if name == "QueueMemberStatus" and k == "LastCall" and v != "0":
            out.append([k, "%{=epoch}"])
            continue
        if name == "OriginateResponse" and k in ("ActionID", "Context", "Exten"):
            out.append([k, {"ActionID": "%{action_id}", "Context": "%{orig_context}",
                            "Exten": "%{orig_exten}"}[k]])
            continue
        if name == "VarSet" and k == "Value":
            var = get["variable"]
            if var in VAR_PARAMS:
                out.append([k, VAR_PARAMS[var]])
                continue
            if var in VAR_CLOCK and v not in ("", "0"):
                out.append([k, VAR_CLOCK[var]])
                continue
            if var == "QUEUE_PRIO":
                out.append([k, "%{queue_prio}"])
                continue
            if var == "AGISTATUS":
                out.append([k, "%{agistatus}"])
                continue
        if name == "Newexten" and kl == "appdata":
            v = _appdata(t, get, v)
            out.append([k, v])
            continue
        out.append([k, t.value(v)])
    return out


def _appdata(t: Templater, get: dict[str, str], v: str) -> str:
    ctx, prio, app = get["context"], get["priority"], get["application"]
    if app == "Wait" and (ctx, prio) in WAIT_PARAMS:
        return WAIT_PARAMS[(ctx, prio)]
    if app == "NoOp" and v.startswith("AGISTATUS="):
        return ("AGISTATUS=%{agistatus} CTI_QUEUE=%{cti_queue} CTI_SEGMENT=%{cti_segment} "
                "CTI_PRIORITY=%{cti_priority} CTI_CUSTOMER_ID=%{cti_customer_id}")
    if app == "Set" and v.startswith("QUEUE_PRIO="):
        return "QUEUE_PRIO=%{queue_prio}"
    if app == "NoOp" and v.startswith("Simulated caller holds"):
        return "Simulated caller holds %{hold_s}s"
    return t.value(v)


def snapshot_row(t: Templater, h: list[list[str]], start: int, prefix: str,
                 lid_role: str) -> list | None:
    """One compressed snapshot if h[start:start+14] is a plain channel snapshot."""
    keys = [prefix + k for k in SNAPSHOT_KEYS]
    block = h[start:start + len(keys)]
    if [k for k, _ in block] != keys:
        return None
    vals = dict(zip(SNAPSHOT_KEYS, (v for _, v in block)))
    role = _role_of(vals["Channel"])
    if role is None:
        return None
    if (STATE_DESC.get(vals["ChannelState"]) != vals["ChannelStateDesc"]
            or vals["Language"] != "en" or vals["AccountCode"] != ""
            or vals["Uniqueid"] != f"%{{uid:{role}}}"
            or vals["Linkedid"] != f"%{{uid:{lid_role}}}"):
        return None
    return ["@", prefix, role, vals["ChannelState"], vals["CallerIDNum"], vals["CallerIDName"],
            vals["ConnectedLineNum"], vals["ConnectedLineName"], vals["Context"],
            vals["Exten"], vals["Priority"]]


def _role_of(value: str) -> str | None:
    m = re.fullmatch(r"%\{ch:([^}]+)\}", value)
    return m.group(1) if m else None


def cel_row(h: list[list[str]], lid_role: str) -> list | None:
    if [k for k, _ in h] != CEL_KEYS:
        return None
    vals = dict((k, v) for k, v in h)
    role = _role_of(vals["Channel"])
    if (role is None or vals["AccountCode"] != "" or vals["EventTime"] != "%{=time}"
            or vals["UniqueID"] != f"%{{uid:{role}}}"
            or vals["LinkedID"] != f"%{{uid:{lid_role}}}" or vals["PeerAccount"] != ""
            or vals["Userfield"] != ""):
        return None
    return ["CEL", vals["EventName"], vals["CallerIDnum"], vals["CallerIDname"],
            vals["CallerIDani"], vals["CallerIDrdnis"], vals["CallerIDdnid"], vals["Exten"],
            vals["Context"], role, vals["Application"], vals["AppData"], vals["AMAFlags"],
            vals["Peer"], vals["Extra"]]


def compress(t: Templater, name: str, h: list[list[str]],
             last: dict[str, list] | None = None) -> list:
    """Header list -> parts: [k, v] pairs, snapshot rows ("@"), a CEL row.

    A snapshot equal to the previous one of the same channel (in template order)
    shrinks to ``["@", prefix, role]``; ``last`` carries that memory.
    """
    lid_role = "C1"
    if name == "CEL":
        row = cel_row(h, lid_role)
        if row is not None:
            return [row]
    parts: list = []
    i = 0
    while i < len(h):
        k = h[i][0]
        prefix = k[:-len("Channel")] if k.endswith("Channel") else None
        if prefix is not None:
            row = snapshot_row(t, h, i, prefix, lid_role)
            if row is not None:
                if last is not None:
                    if last.get(row[2]) == row[3:]:
                        row = row[:3]
                    else:
                        last[row[2]] = row[3:]
                parts.append(row)
                i += len(SNAPSHOT_KEYS)
                continue
        parts.append(h[i])
        i += 1
    return parts


def build(spec: Spec, traces: Path) -> tuple[dict, dict[str, str]]:
    events = select(spec, load(traces / f"{spec.trace}.ami.jsonl"))
    t = Templater(spec, events)
    msgs: list = []
    privilege: dict[str, str] = {}
    gaps = iter(spec.gaps)
    used_gaps = 0
    prev_t = events[0]["t"]
    in_agi = False
    agi_row = None
    last: dict[str, list] = {}
    for e in events:
        name = e["name"]
        if e["headers"][1][0] != "Privilege":
            raise SystemExit(f"{spec.name}: {name} has no Privilege header")
        privilege.setdefault(name, e["headers"][1][1])
        if privilege[name] != e["headers"][1][1]:
            raise SystemExit(f"{spec.name}: {name} privilege varies")
        if name == "AGIExecStart" and not in_agi:
            in_agi = True
            agi_row = compress(t, name, templated_headers(t, e))[0]
            last[agi_row[2]] = agi_row[3:]
            dt = e["t"] - prev_t
            prev_t = e["t"]
            msgs.append([round(dt, 4), "AGI", [agi_row]])
            continue
        if in_agi:
            if name in ("AGIExecStart", "AGIExecEnd") or (
                    name == "VarSet" and first(e["headers"], "Variable") != "AGISTATUS"):
                prev_t = e["t"]
                continue
            in_agi = False
        dt = e["t"] - prev_t
        prev_t = e["t"]
        if dt > GAP:
            label = next(gaps, None)
            if label is None:
                raise SystemExit(f"{spec.name}: more pauses than labels at {name} t={e['t']}")
            used_gaps += 1
            step: float | str = label
        else:
            step = round(dt, 4)
        msgs.append([step, name, compress(t, name, templated_headers(t, e), last)])
    if used_gaps != len(spec.gaps):
        raise SystemExit(f"{spec.name}: {used_gaps} pauses, {len(spec.gaps)} labels")
    legs = sorted(set(t.roles.values()), key=lambda r: (r[0] != "C", r))
    scenario = {
        "source": f"{spec.trace}.ami.jsonl" + (f" Linkedid {spec.linkedid}"
                                               if spec.linkedid else ""),
        "legs": legs,
        "slots": t.slots,
        "recorded": {k: v for k, v in t.params.items() if k not in ("cnum", "cname")},
        "messages": msgs,
    }
    return scenario, privilege


def agi_env(traces: Path) -> list[list[str]]:
    row = json.loads((traces / "inbound_answered.agi.jsonl").read_text().splitlines()[0])
    fixed = {
        "agi_network_script": "%{agi_script}", "agi_request": "%{agi_url}",
        "agi_channel": "%{ch:C2}", "agi_uniqueid": "%{uid:C2}", "agi_callerid": "%{cnum}",
        "agi_calleridname": "%{cname}", "agi_extension": "%{did}", "agi_arg_1": "%{did}",
        "agi_threadid": "%{threadid}",
    }
    return [[k, fixed.get(k, v)] for k, v in row["env"]]


def dump(doc: dict) -> str:
    """JSON with one template message per line: small diffs, still valid JSON."""
    out = ["{"]
    out.append(f' "comment": {json.dumps(doc["comment"])},')
    out.append(f' "privilege": {json.dumps(doc["privilege"], sort_keys=True)},')
    out.append(f' "agi_env": {json.dumps(doc["agi_env"], ensure_ascii=False)},')
    out.append(' "scenarios": {')
    names = list(doc["scenarios"])
    for n, name in enumerate(names):
        sc = doc["scenarios"][name]
        out.append(f'  {json.dumps(name)}: {{')
        for key in ("source", "legs", "slots", "recorded"):
            out.append(f'   {json.dumps(key)}: {json.dumps(sc[key], ensure_ascii=False)},')
        out.append('   "messages": [')
        for i, m in enumerate(sc["messages"]):
            comma = "," if i < len(sc["messages"]) - 1 else ""
            out.append("    " + json.dumps(m, ensure_ascii=False, separators=(",", ":")) + comma)
        out.append("   ]")
        out.append("  }" + ("," if n < len(names) - 1 else ""))
    out.append(" }")
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    privilege: dict[str, str] = {}
    scenarios = {}
    for spec in SPECS:
        scenarios[spec.name], priv = build(spec, args.traces)
        privilege.update(priv)
    doc = {
        "comment": "Generated by cti/sim/make_templates.py from the Asterisk 22.10.1 lab "
                   "traces; do not edit by hand.",
        "privilege": privilege,
        "agi_env": agi_env(args.traces),
        "scenarios": scenarios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = dump(doc)
    json.loads(text)  # the hand-rolled layout must stay valid JSON
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} bytes, {len(scenarios)} scenarios)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
