"""The daemon as a real process: started by its command, killed, restarted.

These are the tests where a process boundary is the point: `cti demo` must
come up from the command line and produce call records, and a daemon killed
with SIGKILL mid-call must, once restarted, rebuild the live call from
CoreShowChannels and still write its record when it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from cti.sim.events import CallParams
from cti.sim.pbx import PbxSimulator

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cti.cli", *args], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def get_json(url: str) -> object:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json()


async def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = await predicate()
        except (aiohttp.ClientError, OSError):
            value = None
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.stdout.read() if proc.stdout else ""


async def test_cti_demo_command_serves_console_and_records_calls(tmp_path: Path) -> None:
    http = free_port()
    proc = spawn(["demo", "--ami-port", "0", "--rate", "4", "--speed", "8",
                  "--state-dir", str(tmp_path)],
                 env={"CTI_HTTP_PORT": str(http), "CTI_POPS_PORT": "0", "CTI_AGI_PORT": "0"})
    try:
        base = f"http://127.0.0.1:{http}"
        async def ami_connected() -> bool:
            status = await get_json(f"{base}/api/status")
            return status["ami"]["state"] == "connected"

        await wait_for(ami_connected, 20, "the demo's daemon to log in to the simulator")
        records = await wait_for(lambda: get_json(f"{base}/api/calls"), 30, "a call record")
        assert records[0]["call_id"] and records[0]["outcome"] in (
            "answered", "abandoned", "no_agent", "failed")
        async with aiohttp.ClientSession() as session, session.get(f"{base}/console") as resp:
            assert resp.status == 200 and "<html" in (await resp.text()).lower()
    finally:
        out = stop(proc)
    assert "Agent console" in out and "token=demo-1001" in out
    assert (tmp_path / "cti.sqlite3").exists()
    listed = subprocess.run([sys.executable, "-m", "cti.cli", "calls", "--json"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO),
                                 "CTI_STORE_PATH": str(tmp_path / "cti.sqlite3")},
                            capture_output=True, text=True, check=True)
    assert json.loads(listed.stdout), "cti calls --json lists what the demo recorded"


async def test_daemon_killed_mid_call_rebuilds_it_after_restart(tmp_path: Path) -> None:
    sim = PbxSimulator(ami_port=0, agi_url=None, rate=0.1, seed=3,
                       call_params=CallParams(ring=0.5, talk=6.0, hold=60.0))
    await sim.start()
    http = free_port()
    env = {"CTI_AMI_PORT": str(sim.ami_port), "CTI_HTTP_PORT": str(http), "CTI_POPS_PORT": "0",
           "CTI_AGI_PORT": "0", "CTI_STORE_PATH": str(tmp_path / "cti.sqlite3"),
           "CTI_CRM_PATH": str(tmp_path / "crm.sqlite3"), "CTI_AMI_BACKOFF_INITIAL": "0.1"}
    base = f"http://127.0.0.1:{http}"
    first = spawn(["run"], env)
    second = None
    try:
        await wait_for(lambda: get_json(f"{base}/healthz"), 20, "the first daemon")
        call_id = sim.place_call("inbound_answered", "+15551230001", "Alice Smith")

        async def connected() -> list[dict]:
            live = await get_json(f"{base}/api/calls?live=1")
            return [c for c in live if c["call_id"] == call_id and c["state"] == "connected"]

        await wait_for(connected, 15, "the call to be connected")
        first.kill()                     # no goodbye, no flush: a crash
        first.wait(10)

        second = spawn(["run"], env)
        [rebuilt] = await wait_for(connected, 20, "the restarted daemon to rebuild the call")
        assert rebuilt["caller_num"] == "+15551230001"
        assert rebuilt["agent"] == "1001"

        async def recorded() -> dict | None:
            calls = await get_json(f"{base}/api/calls")
            return next((c for c in calls if c["call_id"] == call_id), None)

        record = await wait_for(recorded, 20, "the record of the rebuilt call")
        assert record["outcome"] == "answered" and record["agent"] == "1001"
    finally:
        stop(first)
        if second is not None:
            stop(second)
        await sim.stop()


def test_bad_config_stops_the_daemon_with_a_message_naming_the_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "cti.toml"
    cfg.write_text('[pops]\nport = 99999\n')
    done = subprocess.run([sys.executable, "-m", "cti.cli", "run", "--config", str(cfg)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert re.search(r"pops\.port: .*65535", done.stderr), done.stderr
