"""The ``cti`` command.

    cti demo                      daemon + PBX simulator + SQLite CRM + agent console
    cti run --config cti.toml     daemon against a real Asterisk
    cti calls [--json] [--live]   finished calls (or calls in progress)
    cti route +8613800138000      what the FastAGI route decides for a number, and why
    cti crm import FILE.csv       load customers into the embedded CRM
    cti replay FILE.ami.raw       serve a recorded AMI session on a port
    cti check-config --config F   validate a config file
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from cti import log as cti_log
from cti.config import Settings, load_settings
from cti.errors import CtiError


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


# -- run / demo ----------------------------------------------------------------------


async def _serve(settings: Settings, with_simulator: bool) -> None:
    from cti.daemon import Daemon

    daemon = Daemon(settings, with_simulator=with_simulator)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        eps = await daemon.start()
    except BaseException:
        await daemon.stop()
        raise
    first = settings.agents[0] if settings.agents else None
    token = first.token.get_secret_value() if first else ""
    console = eps.console + (f"&token={token}" if with_simulator and token else "")
    print(f"""
CTI connector {'demo ' if with_simulator else ''}running
  AMI                   {eps.ami}
  FastAGI               {eps.agi}
  Agent pop websocket   {eps.pops}
  Agent console         {console}
  Admin API             {eps.http}/api/status   {eps.http}/api/calls?live=1
  Metrics               {eps.http}/metrics
  Call records          {settings.store.path}   (cti calls --json)
Stop with Ctrl-C.
""", flush=True)
    try:
        await stop.wait()
    finally:
        print("stopping …", flush=True)
        await daemon.stop()


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _settings(args)
    update: dict[str, Any] = {
        "sim": settings.sim.model_copy(update={
            "enabled": True, "rate": args.rate, "speed": args.speed, "port": args.ami_port}),
        "crm": settings.crm.model_copy(update={"seed_demo": True}),
    }
    if args.state_dir:  # otherwise the default paths, so `cti calls` / `cti route` see it
        demo_dir = Path(args.state_dir)
        update["store"] = settings.store.model_copy(update={"path": demo_dir / "cti.sqlite3"})
        update["crm"] = update["crm"].model_copy(update={"path": demo_dir / "crm.sqlite3"})
    settings = settings.model_copy(update=update)
    cti_log.setup(settings.log.level, settings.log.json_logs)
    asyncio.run(_serve(settings, with_simulator=True))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cti_log.setup(settings.log.level, settings.log.json_logs)
    asyncio.run(_serve(settings, with_simulator=settings.sim.enabled))
    return 0


# -- calls -----------------------------------------------------------------------------


def cmd_calls(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.live:
        calls = asyncio.run(_fetch_live(settings))
    else:
        calls = asyncio.run(_read_calls(settings, args.limit))
    if args.json:
        _print_json(calls)
        return 0
    if not calls:
        print("no calls" + (" in progress" if args.live else " recorded yet"))
        return 0
    print(f"{'call_id':<22} {'dir':<8} {'state/outcome':<14} {'queue':<11} {'agent':<6} "
          f"{'wait':>5} {'talk':>5}  caller")
    for c in calls:
        outcome = c.get("outcome") or c.get("state") or ""
        wait = "" if c.get("wait_time") is None else f"{c['wait_time']:.0f}"
        talk = "" if c.get("talk_time") is None else f"{c['talk_time']:.0f}"
        caller = cti_log.mask_number(c.get("caller_num")) if c.get("caller_num") else "withheld"
        print(f"{c['call_id']:<22} {c['direction']:<8} {outcome:<14} {c.get('queue') or '-':<11} "
              f"{c.get('agent') or '-':<6} {wait:>5} {talk:>5}  {caller} "
              f"{c.get('caller_name') or ''}")
    return 0


async def _read_calls(settings: Settings, limit: int) -> list[dict[str, Any]]:
    from cti.store import CallStore

    if not Path(settings.store.path).exists():
        return []
    store = CallStore(settings.store.path)
    await store.open()
    try:
        return await store.calls(limit=limit)
    finally:
        await store.close()


async def _fetch_live(settings: Settings) -> list[dict[str, Any]]:
    import aiohttp

    url = f"http://{settings.http.host}:{settings.http.port}/api/calls?live=1"
    try:
        async with aiohttp.ClientSession() as session, session.get(
                url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return orjson.loads(await resp.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CtiError(f"no daemon answering at {url} ({exc.__class__.__name__}); "
                       "is `cti run` / `cti demo` running?") from None


# -- route -----------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(asyncio.run(_explain(settings, args.number)))
    return 0


async def _explain(settings: Settings, number: str) -> str:
    from cti.crm.sqlite import SqliteCrm
    from cti.routing.service import RouteService

    crm = SqliteCrm(settings.crm.path, settings.crm.default_region,
                    history_days=settings.crm.history_days)
    await crm.open()
    try:
        if settings.crm.seed_demo and await crm.is_empty():
            from cti.crm.demo import seed_demo

            await seed_demo(crm)
        text = await RouteService(crm, settings).explain(number)
        if await crm.is_empty():
            text += (f"\nnote:       the CRM at {settings.crm.path} is empty: run `cti demo` "
                     "once, or `cti crm import FILE.csv`")
        return text
    finally:
        await crm.close()


# -- crm import ----------------------------------------------------------------------


def cmd_crm_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    region = (args.region or settings.crm.default_region).upper()
    report = asyncio.run(_import(settings, Path(args.file), region, not args.no_progress))
    print(report.summary())
    return 1 if report.rejected else 0  # good rows are kept either way


async def _import(settings: Settings, path: Path, region: str, progress: bool) -> Any:
    from cti.crm.importer import import_csv
    from cti.crm.sqlite import SqliteCrm

    crm = SqliteCrm(settings.crm.path, region, history_days=settings.crm.history_days)
    await crm.open()
    try:
        return await import_csv(crm, path, region, progress=progress)
    finally:
        await crm.close()


# -- replay ----------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from cti.sim.replay import serve_replay

    path = Path(args.file)
    if not path.is_file():
        raise CtiError(f"trace file {str(path)!r} does not exist")
    cti_log.setup("INFO")
    asyncio.run(serve_replay(path, args.host, args.port, args.speed))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from cti.daemon import config_problems

    settings = _settings(args)
    problems = config_problems(settings)
    for problem in problems:
        print(f"cti: error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"config OK: {len(settings.agents)} agents, {len(settings.routing.rules)} route rules, "
          f"AMI {', '.join(str(e) for e in settings.ami.endpoints)}")
    return 0


# -- entry point -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cti", description="Asterisk <-> CRM CTI connector")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", help="TOML config file (CTI_* env vars override it)")
        return sp

    d = with_config(sub.add_parser("demo", help="run the daemon on the PBX simulator"))
    d.add_argument("--rate", type=float, default=0.3, help="simulated calls per second")
    d.add_argument("--speed", type=float, default=1.0, help="simulator time compression")
    d.add_argument("--ami-port", type=int, default=0,
                   help="simulator AMI port (default: any free port; it is printed)")
    d.add_argument("--state-dir", default=None,
                   help="where the demo keeps its SQLite files (default: store.path, crm.path)")
    d.set_defaults(func=cmd_demo)

    r = with_config(sub.add_parser("run", help="run the daemon against Asterisk"))
    r.set_defaults(func=cmd_run)

    c = with_config(sub.add_parser("calls", help="list call records"))
    c.add_argument("--json", action="store_true", help="print JSON")
    c.add_argument("--live", action="store_true", help="calls in progress (asks the daemon)")
    c.add_argument("--limit", type=int, default=50)
    c.set_defaults(func=cmd_calls)

    ro = with_config(sub.add_parser("route", help="explain the route for a caller number"))
    ro.add_argument("number")
    ro.set_defaults(func=cmd_route)

    crm = sub.add_parser("crm", help="embedded CRM tools")
    crm_sub = crm.add_subparsers(dest="crm_command", required=True)
    imp = with_config(crm_sub.add_parser("import", help="import customers from CSV"))
    imp.add_argument("file")
    imp.add_argument("--region", help="default region for national numbers (e.g. US, CN)")
    imp.add_argument("--no-progress", action="store_true")
    imp.set_defaults(func=cmd_crm_import)

    rp = sub.add_parser("replay", help="serve a recorded *.ami.raw on an AMI port")
    rp.add_argument("file")
    rp.add_argument("--host", default="127.0.0.1")
    rp.add_argument("--port", type=int, default=5038)
    rp.add_argument("--speed", type=float, default=1.0, help="0 = as fast as possible")
    rp.set_defaults(func=cmd_replay)

    cc = with_config(sub.add_parser("check-config", help="validate a config file"))
    cc.set_defaults(func=cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cti_log.setup("WARNING")  # one-shot commands print results, not log lines
    try:
        return int(args.func(args) or 0)
    except CtiError as exc:
        print(f"cti: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
