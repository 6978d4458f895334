"""Web benchmark room: ``mbostream bench web`` — the web UI's frame times in a real browser at a given rate.

Starts ``mbostream serve --rate R --loop`` (the e2e bench's server process), the Envoy edge in
front of it serving the built UI, and headless Chromium on the page (``web/e2e/driver.mjs``, the
browser test's driver, scenario ``bench``). The page opens the best bid's L3 queue, warms up,
then measures ``requestAnimationFrame`` intervals and long tasks for the window. Over the same
window (the driver announces its start and end) this process measures the CPU time of the server,
of Envoy, of the browser (the driver and all its descendants) and of everything else on the
machine, and the rate the replay achieved. Nothing here is a pass/fail check: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from mbostream.tools.browser import DIST_DIR, Driver, ensure_ui_built, missing_requirement
from mbostream.tools.bench_server import BenchServer, Reading, Window, process_cpu_seconds, tree_cpu_seconds
from mbostream.edge.supervisor import Edge
from mbostream.errors import BenchError

#: Other processes' CPU share above which the summary says the figures are skewed.
_BUSY_WARNING_PERCENT: Final = 10.0
#: The page header's statistics (by their test id) as the summary names them.
_HEADER_NAMES: Final = {
    "feed": "feed",
    "received": "book updates received",
    "shown": "shown",
    "events": "trade tape",
    "p50": "latency p50",
    "p99": "latency p99",
    "render": "render p99",
}


@dataclass(frozen=True, kw_only=True)
class WebBenchConfig:
    """What ``mbostream bench web`` runs (see the module docstring)."""

    files: tuple[str, ...] = ()
    rate: float = 500_000.0
    seconds: float = 10.0
    warmup: float = 3.0
    #: Ladder levels per side (the page's ``?depth=``; 15 is the page's default).
    depth: int = 15
    #: Extra ``mbostream serve`` flags, e.g. ``("--no-store",)``.
    server_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Sample:
    """The server's reading and the CPU seconds of the other parties, at one instant."""

    server: Reading
    envoy: float
    browser: float
    bench: float


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(cfg: WebBenchConfig, server: BenchServer, log_path: Path) -> dict[str, Any]:
    port = int(server.target.rsplit(":", 1)[1])
    async with Edge(listen_port=0, upstream_port=port, static_dir=DIST_DIR) as edge:
        driver = Driver(
            "--url", f"{edge.url}/?depth={cfg.depth}", "--scenario", "bench", "--depth", str(cfg.depth),
            "--warmup-seconds", f"{cfg.warmup:g}", "--frame-seconds", f"{cfg.seconds:g}",
            log_path=log_path,
        )  # fmt: skip
        samples: dict[str, _Sample] = {}

        async def sample() -> _Sample:
            reading = await asyncio.to_thread(server.read)
            assert driver.pid is not None and edge.pid is not None
            return _Sample(
                server=reading,
                envoy=process_cpu_seconds(edge.pid),
                browser=await asyncio.to_thread(tree_cpu_seconds, driver.pid),
                bench=_own_cpu_seconds(),
            )

        async def on_event(event: dict[str, Any]) -> dict[str, Any]:
            if event["name"] != "window":
                return {"ok": False, "error": f"unknown event {event['name']}"}
            samples[event["phase"]] = await sample()
            return {"ok": True}

        report = await driver.run(on_event)
    failed = {name: step for name, step in report["steps"].items() if not step["ok"]}
    if failed or not report["ok"] or set(samples) != {"start", "end"}:
        raise BenchError(f"the browser run failed: {json.dumps(failed or report, indent=2)[-4000:]}")
    start, end = samples["start"], samples["end"]
    window = Window(start.server, end.server)
    measured = {name: getattr(end, name) - getattr(start, name) for name in ("envoy", "browser", "bench")}
    frames = report["steps"]["frames"]["value"]
    return {
        "config": asdict(cfg),
        "window_seconds": round(window.seconds, 2),
        "page": frames["frames"],
        "header": {key.removeprefix("stat-"): value for key, value in frames["stats"].items()},
        "server": {
            "replayed_records_per_second": window.replayed_records_per_second,
            "cpu_percent": window.server_cpu_percent,
        },
        "envoy": {"cpu_percent": window.percent(measured["envoy"])},
        "browser": {"cpu_percent": window.percent(measured["browser"])},
        "other_processes_cpu_percent": window.others_cpu_percent(*measured.values()),
        "interrupts_cpu_percent": window.interrupts_cpu_percent,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def run_web_bench(cfg: WebBenchConfig) -> dict[str, Any]:
    """Runs the benchmark once; returns the result document (BenchError when a part fails)."""
    missing = missing_requirement()
    if missing is not None:
        raise BenchError(missing)
    ensure_ui_built()
    with (
        BenchServer(("--rate", f"{cfg.rate:g}"), files=cfg.files, server_args=cfg.server_args) as server,
        tempfile.TemporaryDirectory(prefix="mbostream-web-bench-") as scratch,
    ):
        results = asyncio.run(_measure(cfg, server, Path(scratch) / "driver.log"))
    results["server"]["exit_code"] = server.exit_code
    return results


def format_summary(results: dict[str, Any]) -> str:
    """The readable report of :func:`run_web_bench`."""
    cfg, page, server = results["config"], results["page"], results["server"]
    data = ", ".join(cfg["files"]) or "the generated sample"
    lines = [
        f"mbostream bench web: {data} replayed at {cfg['rate']:,.0f} records/s (--loop"
        f"{' ' + ' '.join(cfg['server_args']) if cfg['server_args'] else ''}), headless Chromium at 1440x900 "
        f"(software rendering), ladder depth {cfg['depth']}, a queue open; {results['window_seconds']:g} s window "
        f"after {cfg['warmup']:g} s warm-up; {results['cpus']} CPUs",
        f"page: {page['fps']} fps; frame time p50 {page['p50Ms']} ms, p95 {page['p95Ms']} ms, "
        f"p99 {page['p99Ms']} ms, max {page['maxMs']} ms; {page['over50Ms']} frames over 50 ms; "
        f"{page['longTasks']} long tasks ({page['longTaskMs']} ms)",
        "header: " + ", ".join(f"{_HEADER_NAMES.get(key, key)} {value}" for key, value in results["header"].items()),
        f"CPU (100% = one core): server {server['cpu_percent']}% (replayed "
        f"{server['replayed_records_per_second']:,} records/s), Envoy {results['envoy']['cpu_percent']}%, "
        f"browser {results['browser']['cpu_percent']}% (all its processes), other processes "
        f"{results['other_processes_cpu_percent']}%, interrupts {results['interrupts_cpu_percent']}%; "
        f"server exit {server['exit_code']}",
    ]
    if results["other_processes_cpu_percent"] > _BUSY_WARNING_PERCENT:
        lines.append(
            f"WARNING: other processes used {results['other_processes_cpu_percent']}% CPU during the window; "
            "the figures are skewed — rerun on a quiet machine"
        )
    return "\n".join(lines)


def _cmd_web(args: argparse.Namespace) -> int:
    cfg = WebBenchConfig(
        files=tuple(args.file),
        rate=args.rate,
        seconds=args.seconds,
        warmup=args.warmup,
        depth=args.depth,
        server_args=tuple(arg for option in args.server_arg for arg in option.split()),
    )
    results = run_web_bench(cfg)
    print(json.dumps(results, indent=2) if args.json else format_summary(results))
    return 0
