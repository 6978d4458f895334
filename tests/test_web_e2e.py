"""Web UI end to end: the real server, the real Envoy edge, the built UI and Debian's Chromium.

The browser is driven by ``web/e2e/driver.mjs`` (playwright-core, headless) through
:mod:`mbostream.tools.browser`, the machinery ``mbostream bench web`` uses too. This test starts the
server and the edge, runs the driver, and answers its requests on stdin: when the driver has
paused the replay it compares the rendered ladder and L3 queue with ``GetBook`` at the same
sequence, and when asked it restarts the server on the same port so the page must reconnect.
The page's screenshot is saved as ``artifacts/web-screenshot.png`` and the driver's full report
as ``artifacts/web-e2e.json``. Set ``MBOSTREAM_UPDATE_SCREENSHOT=1`` to also refresh
``docs/screenshot.png``. Frame times are measured by ``mbostream bench web``, not here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

REPO_ROOT: Final = Path(__file__).resolve().parents[1]
SERVER_DIR: Final = REPO_ROOT / "server"
if str(SERVER_DIR) not in sys.path:
    sys.path.insert(0, str(SERVER_DIR))

import grpc  # noqa: E402
from server_harness import TOKEN, ServeProcess, free_port  # noqa: E402
from test_edge import envoy_or_skip, server_or_skip  # noqa: E402

from mbostream.tools.browser import DIST_DIR, Driver, ensure_ui_built, missing_requirement  # noqa: E402
from mbostream.edge.supervisor import Edge  # noqa: E402
from mbostream_core.v1 import book_pb2, market_data_pb2, market_data_pb2_grpc  # noqa: E402

ARTIFACTS_DIR: Final = REPO_ROOT / "artifacts"
SCREENSHOT: Final = ARTIFACTS_DIR / "web-screenshot.png"
REPORT: Final = ARTIFACTS_DIR / "web-e2e.json"
DOCS_SCREENSHOT: Final = REPO_ROOT / "docs" / "screenshot.png"
# Real CME crude oil MBO (symbol CLX5); the file legitimately ends with a crossed book.
CLX5_FILE: Final = REPO_ROOT.parent / "shared" / "data" / "CLX5_mbo.dbn"
CROSSED_SCREENSHOT: Final = ARTIFACTS_DIR / "web-screenshot-crossed.png"
RPC_TIMEOUT_SECONDS: Final = 10
LADDER_DEPTH: Final = 15
# The queue view shows at most this many orders of a level.
QUEUE_ROWS_SHOWN: Final = 200
BASE_RATE: Final = "20000"
HIGH_RATE: Final = "500000"


def _requirements_or_skip() -> None:
    server_or_skip()
    envoy_or_skip()
    missing = missing_requirement()
    if missing is not None:
        pytest.skip(missing)


def _level_rows(levels: Any) -> list[dict[str, str]]:
    return [{"price": str(lv.price), "size": str(lv.size), "count": str(lv.count)} for lv in levels]


def _ui_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{key: row[key] for key in ("price", "size", "count")} for row in rows]


def compare_with_get_book(event: dict[str, Any], book: book_pb2.BookSnapshot) -> list[str]:
    """What differs between the ladder and queue the page rendered and GetBook's book."""
    ladder = event["ladder"]
    mismatches = []
    if str(book.sequence) != ladder["sequence"]:
        mismatches.append(f"venue sequence: page {ladder['sequence']}, GetBook {book.sequence}")
    if str(book.replay_sequence) != ladder["replaySequence"]:
        mismatches.append(f"replay sequence: page {ladder['replaySequence']}, GetBook {book.replay_sequence}")
    if _ui_rows(ladder["bids"]) != _level_rows(book.bids):
        mismatches.append(f"bids: page {_ui_rows(ladder['bids'])}, GetBook {_level_rows(book.bids)}")
    # The page shows asks top-down (highest first); GetBook lists them best (lowest) first.
    if _ui_rows(ladder["asks"][::-1]) != _level_rows(book.asks):
        mismatches.append(f"asks: page {_ui_rows(ladder['asks'][::-1])}, GetBook {_level_rows(book.asks)}")
    selected = event.get("selected")
    if selected:
        levels = book.bids if selected["side"] == "bid" else book.asks
        level = next((lv for lv in levels if str(lv.price) == selected["price"]), None)
        expected = [{"orderId": str(o.order_id), "size": str(o.size)} for o in (level.orders if level else [])]
        if event["queue"] != expected[:QUEUE_ROWS_SHOWN]:
            mismatches.append(f"queue at {selected}: page {event['queue']}, GetBook {expected[:QUEUE_ROWS_SHOWN]}")
    return mismatches


@dataclass
class _Conversation:
    """What the test learnt while answering the driver."""

    channel: grpc.aio.Channel
    restart_server: Any
    get_book_mismatches: list[str] | None = None
    restarts: int = 0

    async def answer(self, event: dict[str, Any]) -> dict[str, Any]:
        """The ACK to one driver event."""
        stub = market_data_pb2_grpc.MarketDataServiceStub(self.channel)
        if event["name"] == "paused":
            ladder = event["ladder"]
            request = market_data_pb2.GetBookRequest(
                instrument_id=int(ladder["instrumentId"]),
                publisher_id=int(ladder["publisherId"]),
                depth=int(event["depth"]),
                include_orders=True,
            )
            reply = await stub.GetBook(request, timeout=RPC_TIMEOUT_SECONDS)
            self.get_book_mismatches = compare_with_get_book(event, reply.book)
            return {"ok": not self.get_book_mismatches, "mismatches": self.get_book_mismatches}
        if event["name"] == "restart-server":
            await self.restart_server()
            self.restarts += 1
            return {"ok": True}
        return {"ok": False, "error": f"unknown event {event['name']}"}


def test_web_ui_end_to_end(tmp_path: Path) -> None:
    _requirements_or_skip()
    ensure_ui_built()
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    port = free_port()
    server_args = ("--rate", BASE_RATE, "--loop")
    servers = [ServeProcess(*server_args, port=port, log_path=tmp_path / "serve.log").start()]

    async def restart_server() -> None:
        await asyncio.to_thread(servers[-1].stop)
        servers.append(ServeProcess(*server_args, port=port, log_path=tmp_path / "serve.log"))
        await asyncio.to_thread(servers[-1].start)

    async def scenario() -> tuple[dict[str, Any], _Conversation]:
        async with Edge(listen_port=0, upstream_port=port, static_dir=DIST_DIR) as edge:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}")
            talk = _Conversation(channel, restart_server)
            driver = Driver(
                "--url", edge.url, "--token", TOKEN, "--screenshot", str(SCREENSHOT), "--controlled",
                "--depth", str(LADDER_DEPTH), "--high-rate", HIGH_RATE,
                log_path=tmp_path / "driver.stderr",
            )  # fmt: skip
            try:
                return await driver.run(talk.answer), talk
            finally:
                await asyncio.wait_for(channel.close(), RPC_TIMEOUT_SECONDS)

    try:
        report, talk = asyncio.run(scenario())
    finally:
        for server in servers:
            server.stop()

    driver_stderr = (tmp_path / "driver.stderr").read_text()[-4000:]
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    steps = report["steps"]
    failed = {name: step for name, step in steps.items() if not step["ok"]}
    assert not failed, f"browser steps failed: {json.dumps(failed, indent=2)}\n{driver_stderr}"
    assert report["ok"], f"page errors: {report['pageErrors']}"

    assert talk.get_book_mismatches == [], talk.get_book_mismatches
    assert talk.restarts == 1
    assert SCREENSHOT.stat().st_size > 0

    reconnect = steps["reconnects-after-server-restart"]["value"]
    # The live connection lost (again if it reached the old server while that drained), as the
    # page counts it; which transient states were drawn (reconnecting, connecting) depends on how
    # many frames a loaded machine draws meanwhile.
    assert reconnect["losses"] >= 1, reconnect
    assert reconnect["lossTitle"].startswith("The connection to the server was lost"), reconnect
    assert reconnect["states"][-1] == "live", reconnect
    # The restarted server is another run (epoch): the page says so and starts its history over.
    assert any("server restarted" in toast for toast in reconnect["toasts"]), reconnect["toasts"]
    unauthenticated = steps["pause-without-token-fails-visibly"]["value"]
    assert "Unauthenticated" in unauthenticated["message"]
    high = steps["usable-at-high-rate"]["value"]
    assert high["queueTitle"].startswith("Ask")
    assert high["status"].startswith("500.0k rec/s target"), high  # the panel's pacing after Set rate

    if os.environ.get("MBOSTREAM_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)


def test_web_ui_flags_the_crossed_end_of_the_real_clx5_file(tmp_path: Path) -> None:
    _requirements_or_skip()
    if not CLX5_FILE.is_file():
        pytest.skip(f"{CLX5_FILE} is not there")
    ensure_ui_built()
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    # --max and no --loop: the replay runs to the end of the file and stays there, crossed.
    server = ServeProcess(str(CLX5_FILE), "--max", log_path=tmp_path / "serve.log").start()

    async def scenario() -> dict[str, Any]:
        async with Edge(listen_port=0, upstream_port=server.port, static_dir=DIST_DIR) as edge:
            driver = Driver(
                "--url", edge.url, "--scenario", "ladder", "--screenshot", str(CROSSED_SCREENSHOT),
                log_path=tmp_path / "driver.stderr",
            )  # fmt: skip
            return await driver.run()

    try:
        report = asyncio.run(scenario())
    finally:
        server.stop()
    assert report["ok"], json.dumps(report, indent=2)
    ladder = report["steps"]["ladder-ordered"]["value"]
    assert ladder["state"] == "crossed"
    assert ladder["flagged"] and not ladder["separated"]


def test_the_page_takes_the_token_mbostream_run_prints_and_controls_the_replay(
    tmp_path: Path, generated_small: Path
) -> None:
    _requirements_or_skip()
    ensure_ui_built()
    # No token configured: `mbostream run` makes one and prints the page's URL carrying it.
    run = ServeProcess(
        str(generated_small), "--rate", BASE_RATE, "--loop", "--edge-port", "0",
        command="run", token=None, log_path=tmp_path / "run.log",
    ).start()  # fmt: skip
    try:
        token = run.page_url.removeprefix(f"{run.url}/#token=")
        assert token and token != run.page_url
        driver = Driver("--url", run.page_url, "--scenario", "launch-token", log_path=tmp_path / "driver.stderr")
        report = asyncio.run(driver.run())
    finally:
        run.stop()
    steps = report["steps"]
    failed = {name: step for name, step in steps.items() if not step["ok"]}
    assert not failed, f"browser steps failed: {json.dumps(failed, indent=2)}"
    assert report["ok"], f"page errors: {report['pageErrors']}"
    href = steps["token-leaves-the-address-bar"]["value"]["href"]
    assert href.startswith(f"{run.url}/") and token not in href
    assert steps["pause-with-launch-token"]["value"]["message"] == "Pause: done."
    assert steps["resume-with-launch-token"]["value"]["message"] == "Resume: done."
