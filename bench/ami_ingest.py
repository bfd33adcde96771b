"""AMI ingest benchmark: events per second through parse + call model, one core.

Three contenders run on the same bytes in the same process, best of N rounds:

* ``bare``      - a split-on-terminator + dict-per-message loop (the floor any
                  parser must pay: decode, split lines, build a dict);
* ``panoramisk`` - panoramisk 1.4's own ``AMIProtocol.data_received`` (parse
                  and dispatch only; we do not use it, it is the yardstick);
* ``cti``       - :class:`cti.ami.protocol.Parser` + :class:`cti.calls.tracker.CallTracker`
                  (framing, lazy headers, and the full call model).

Input: the recorded ``burst`` session (20 calls, 4 576 events from a real
Asterisk 22), repeated to about 100 000 events, fed in 64 KiB reads.

    python bench/ami_ingest.py [--rounds 5] [--repeat 22] [--trace PATH]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cti.ami.protocol import Parser  # noqa: E402
from cti.calls.agents import AgentDirectory  # noqa: E402
from cti.calls.tracker import CallTracker  # noqa: E402
from cti.config import Settings  # noqa: E402
from cti.log import setup as setup_logging  # noqa: E402

CHUNK = 65536


def load_stream(trace: Path, repeat: int) -> tuple[bytes, bytes]:
    """(banner, body) where body is the trace's messages repeated ``repeat`` times."""
    raw = trace.read_bytes()
    nl = raw.index(b"\n") + 1
    return raw[:nl], raw[nl:] * repeat


def chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def run_bare(parts: list[bytes]) -> int:
    n = 0
    tail = b""
    for part in parts:
        blocks = (tail + part).split(b"\r\n\r\n")
        tail = blocks.pop()
        for block in blocks:
            d = {}
            for line in block.decode("utf-8", "replace").split("\r\n"):
                k, _, v = line.partition(": ")
                d[k] = v
            n += 1
    return n


def run_cti(banner: bytes, parts: list[bytes], directory: AgentDirectory) -> int:
    parser = Parser()
    tracker = CallTracker(directory, ("callbacks",))
    parser.feed(banner)
    handle = tracker.handle
    n = 0
    now = 0.0
    for part in parts:
        for msg in parser.feed(part):
            handle(msg, now)
            n += 1
        now += 0.001
    return n


def run_panoramisk(banner: bytes, parts: list[bytes]) -> int | None:
    try:
        from panoramisk.ami_protocol import AMIProtocol
    except ImportError:
        return None

    class Factory:
        save_stream = None
        count = 0

        def dispatch(self, message: object) -> None:
            self.count += 1

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            pass

    proto = AMIProtocol()
    proto.connection_made(Transport())
    factory = Factory()
    proto.factory = factory
    proto.encoding = "utf-8"
    proto.data_received(banner)
    for part in parts:
        proto.data_received(part)
    return factory.count


def best(fn, rounds: int) -> tuple[float, int]:
    times = []
    n = 0
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t0)
    return min(times), n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=22)
    ap.add_argument("--trace", type=Path,
                    default=REPO.parent / "shared" / "traces" / "burst.ami.raw")
    args = ap.parse_args()
    setup_logging("WARNING")
    if not args.trace.is_file():
        print(f"trace {args.trace} not found (pass --trace)", file=sys.stderr)
        return 2
    banner, body = load_stream(args.trace, args.repeat)
    parts = chunks(body)
    directory = AgentDirectory.from_settings(Settings().agents)

    t_bare, n_bare = best(lambda: run_bare(parts), args.rounds)
    t_cti, n_cti = best(lambda: run_cti(banner, parts, directory), args.rounds)
    res_pan = best(lambda: run_panoramisk(banner, parts) or 0, args.rounds)

    rate = lambda n, t: n / t if t else 0.0  # noqa: E731
    r_bare, r_cti = rate(n_bare, t_bare), rate(n_cti, t_cti)
    print(f"input: {args.trace.name} x{args.repeat} = {len(body) / 1e6:.1f} MB, "
          f"{n_cti} messages, {CHUNK} B reads, best of {args.rounds}")
    print(f"bare split+dict loop : {r_bare:>10,.0f} msg/s")
    if res_pan[1]:
        r_pan = rate(res_pan[1], res_pan[0])
        print(f"panoramisk 1.4 parse : {r_pan:>10,.0f} msg/s")
    else:
        r_pan = 0.0
        print("panoramisk 1.4 parse : not installed (pip install -e '.[bench]')")
    print(f"cti parse+call model : {r_cti:>10,.0f} msg/s")
    print(f"cti / bare           : {r_cti / r_bare:>10.2f}   (target >= 0.50)")
    if r_pan:
        print(f"cti / panoramisk     : {r_cti / r_pan:>10.2f}   (target >= 2.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
