"""Pop latency: AMI event written -> websocket frame received, p50 / p99.

The daemon runs as its own process (``cti run``), exactly as in production.
This process plays Asterisk: an AMI server that writes simulated calls (the
recorded Asterisk 22 event sequences from ``cti.sim.events``, CEL/VarSet noise
included) at a given rate, and N agents connected on the pop websocket. For
each call, the clock starts when the ``AgentCalled`` event is written to the
socket and stops when the rung agent's websocket receives the ``pop`` frame.

    python bench/pop_latency.py [--rate 100] [--agents 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cti.sim.events import Agent, CallParams, Ids, build_call  # noqa: E402


def render_calls(n_calls: int, n_agents: int, rate: float, seed: int) -> tuple[
        list[tuple[float, bytes, str | None]], dict[str, str]]:
    """Timeline of (at, bytes, call_id-if-AgentCalled) and call_id -> agent id."""
    rng = random.Random(seed)
    ids = Ids()
    timeline: list[tuple[float, bytes, str | None]] = []
    rung: dict[str, str] = {}
    for i in range(n_calls):
        agent_id = str(5000 + rng.randrange(n_agents))
        params = CallParams(number=f"+1555{rng.randrange(10**7):07d}", name=f"Bench {i}",
                            ring=0.2, talk=1.0, hold=30.0)
        events = build_call("inbound_answered", params, ids=ids, start=1_800_000_000.0 + i,
                            agents=[[Agent(agent_id, f"Agent {agent_id}")]], queue="vip",
                            rng=rng)
        at = i / rate
        call_id = None
        for delay, msg in events:
            at += delay
            marker = None
            if msg.name == "AgentCalled":
                call_id = msg.get("Linkedid")
                marker = call_id
                rung[call_id] = agent_id
            timeline.append((at, msg.to_text().encode(), marker))
    timeline.sort(key=lambda t: t[0])
    return timeline, rung


class FakeAsterisk:
    """Just enough AMI for the daemon: banner, login, ping, empty CoreShowChannels."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.ready = asyncio.Event()
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                block, buf = buf.split(b"\r\n\r\n", 1)
                head = dict(line.split(": ", 1) for line in block.decode().split("\r\n")
                            if ": " in line)
                action, aid = head.get("Action", "").lower(), head.get("ActionID", "")
                if action == "login":
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\n"
                                 "Message: Authentication accepted\r\n\r\n"
                                 "Event: FullyBooted\r\nPrivilege: system,all\r\n"
                                 "Status: Fully Booted\r\n\r\n".encode())
                    self.writers.append(writer)
                    self.ready.set()
                elif action == "coreshowchannels":
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\nEventList: start\r\n"
                                 "Message: Channels will follow\r\n\r\n"
                                 f"Event: CoreShowChannelsComplete\r\nActionID: {aid}\r\n"
                                 "EventList: Complete\r\nListItems: 0\r\n\r\n".encode())
                else:
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\n"
                                 f"Timestamp: {time.time():.6f}\r\n\r\n".encode())


async def daemon_gc(http_port: int) -> str:
    """The daemon's own garbage-collector pauses, from its /metrics."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{http_port}/metrics") as resp:
        text = await resp.text()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cti_gc_pause_seconds_bucket") and 'generation="2"' in line:
            le = line.split('le="')[1].split('"')[0]
            counts[le] = float(line.rsplit(" ", 1)[1])
        if line.startswith("cti_gc_pause_seconds_count"):
            gen = line.split('generation="')[1].split('"')[0]
            counts[f"n{gen}"] = float(line.rsplit(" ", 1)[1])
    over = counts.get("n2", 0) - counts.get("0.01", 0)
    return (f"daemon gc: {counts.get('n0', 0):.0f} gen0, {counts.get('n1', 0):.0f} gen1, "
            f"{counts.get('n2', 0):.0f} gen2 collections; gen2 over 10 ms: {over:.0f}")


def write_config(path: Path, ami_port: int, pops_port: int, n_agents: int, state: Path) -> None:
    lines = [
        f'[ami]\nhost = "127.0.0.1"\nport = {ami_port}\n',
        '[agi]\nport = 0\n', f'[pops]\nport = {pops_port}\nmax_connections = {n_agents + 100}\n',
        f'[http]\nport = {pops_port + 1}\n', '[log]\nlevel = "WARNING"\n',
        f'[crm]\npath = "{state / "crm.sqlite3"}"\n',
        f'[store]\npath = "{state / "cti.sqlite3"}"\n',
    ]
    for i in range(n_agents):
        aid = 5000 + i
        lines.append(f'[[agents]]\nid = "{aid}"\ninterfaces = ["Local/{aid}@agents/n"]\n'
                     f'member_names = ["Agent {aid}"]\ntoken = "t{aid}"\n')
    path.write_text("\n".join(lines))


async def agent_client(url: str, agent_id: str, received: dict[str, float],
                       connected: asyncio.Semaphore) -> None:
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(orjson.dumps({"type": "auth", "agent": agent_id, "token": f"t{agent_id}"}).decode())
        connected.release()
        async for frame in ws:
            now = time.monotonic()
            msg = orjson.loads(frame)
            if msg.get("type") == "pop" and msg["call_id"] not in received:
                received[msg["call_id"]] = now


async def main_async(args: argparse.Namespace) -> int:
    n_calls = int(args.rate * args.seconds)
    print(f"rendering {n_calls} calls …", flush=True)
    timeline, rung = render_calls(n_calls, args.agents, args.rate, args.seed)

    ami = FakeAsterisk()
    await ami.start()
    pops_port = args.pops_port
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        cfg = state / "bench.toml"
        write_config(cfg, ami.port, pops_port, args.agents, state)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "cti.cli", "run", "--config", str(cfg)],
                                env=env, stdout=subprocess.DEVNULL)
        try:
            await asyncio.wait_for(ami.ready.wait(), 20)
            await asyncio.sleep(0.5)
            received: dict[str, float] = {}
            sem = asyncio.Semaphore(0)
            url = f"ws://127.0.0.1:{pops_port}/"
            clients = [asyncio.create_task(agent_client(url, str(5000 + i), received, sem))
                       for i in range(args.agents)]
            for _ in range(args.agents):
                await asyncio.wait_for(sem.acquire(), 30)
            await asyncio.sleep(1.0)
            # The harness must not stall itself: a full collection over the 200k-event
            # timeline would delay receive timestamps and be blamed on the daemon.
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 20, 10)  # as the daemon does
            print(f"{args.agents} agents connected; playing {len(timeline)} AMI events "
                  f"({n_calls} calls at {args.rate}/s)", flush=True)

            lags: list[float] = []

            async def watch_lag() -> None:
                # the harness's own event-loop lag: if it stalls, so do its timestamps
                while True:
                    t0 = time.monotonic()
                    await asyncio.sleep(0.005)
                    lags.append(time.monotonic() - t0 - 0.005)

            watcher = asyncio.create_task(watch_lag())
            written: dict[str, float] = {}
            writer = ami.writers[0]
            start = time.monotonic()
            i = 0
            while i < len(timeline):
                now = time.monotonic() - start
                batch = []
                while i < len(timeline) and timeline[i][0] <= now:
                    batch.append(timeline[i])
                    i += 1
                for _, data, marker in batch:
                    writer.write(data)
                    if marker:
                        written[marker] = time.monotonic()
                if batch:
                    await writer.drain()
                if i < len(timeline):
                    await asyncio.sleep(max(0.0, min(0.002, timeline[i][0] - now)))
            elapsed = time.monotonic() - start
            await asyncio.sleep(2.0)
            watcher.cancel()
            gc_lines = await daemon_gc(pops_port + 1)
            for c in clients:
                c.cancel()
        finally:
            proc.terminate()
            proc.wait(10)
            for w in ami.writers:
                w.close()
            ami.server.close()
            await asyncio.sleep(0.1)

    lat = sorted((received[c] - t) * 1000 for c, t in written.items() if c in received)
    missing = len(written) - len(lat)
    if not lat:
        print("no pops received", file=sys.stderr)
        return 1
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(f"events: {len(timeline)} in {elapsed:.1f} s ({len(timeline) / elapsed:,.0f}/s); "
          f"pops: {len(lat)} received, {missing} missing")
    print(gc_lines)
    lags.sort()
    print(f"harness loop lag ms: p99 {lags[int(0.99 * len(lags))] * 1000:.2f}  "
          f"max {lags[-1] * 1000:.2f} (large values distort the figures below)")
    print(f"pop latency ms: p50 {p(0.50):.2f}  p90 {p(0.90):.2f}  p99 {p(0.99):.2f}  "
          f"max {lat[-1]:.2f}  mean {statistics.mean(lat):.2f}   (target p99 <= 10 ms)")
    return 0 if missing == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0, help="new calls per second")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pops-port", type=int, default=18765)
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
