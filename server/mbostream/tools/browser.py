"""Browser room: the built web UI and a headless Chromium driven by ``web/e2e/driver.mjs``.

One machinery for the browser test (``tests/test_web_e2e.py``) and ``mbostream bench web``: what
the browser needs (Node.js, ``playwright-core`` from ``web/node_modules``, Debian's Chromium),
building ``web/dist`` when a source is newer, and one run of the driver, whose conversation is
line-based: the driver prints ``EVENT {...}`` and waits for one ``ACK {...}`` line on stdin per
event, and ends with ``RESULT {...}``, its JSON report.

Errors: :class:`BrowserError` (a :class:`~mbostream.errors.MbostreamError`) when the UI cannot be
built or the driver gives no report.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from mbostream.errors import MbostreamError

WEB_DIR: Final = Path(__file__).resolve().parents[3] / "web"
DIST_DIR: Final = WEB_DIR / "dist"
DEFAULT_CHROMIUM: Final = "/usr/bin/chromium"
#: What ``npm run build`` reads: ``web/dist`` older than any of these is rebuilt.
BUILD_INPUTS: Final = ("src", "index.html", "vite.config.ts", "package-lock.json", "tsconfig.json")
BUILD_TIMEOUT_SECONDS: Final = 300.0
DRIVER_TIMEOUT_SECONDS: Final = 300.0
_LOG_TAIL_CHARS: Final = 4000

#: Answers one driver event (``{"name": ..., ...}``) with the ACK payload.
EventHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class BrowserError(MbostreamError):
    """The web UI cannot be built, or the browser driver failed without a report."""


def chromium_path() -> str:
    """The Chromium binary: ``CHROMIUM_PATH``, else Debian's."""
    return os.environ.get("CHROMIUM_PATH", DEFAULT_CHROMIUM)


def missing_requirement() -> str | None:
    """What the browser lacks, with the command that installs it; None when everything is there."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed"
    if not (WEB_DIR / "node_modules" / "playwright-core").is_dir():
        return "web dependencies are not installed: run `npm ci --prefix web`"
    if not os.access(chromium_path(), os.X_OK):
        return f"no Chromium at {chromium_path()}: run `apt-get install -y chromium` (or set CHROMIUM_PATH)"
    return None


def _newest_mtime(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    return max((p.stat().st_mtime for p in path.rglob("*") if p.is_file()), default=0.0)


def ensure_ui_built() -> None:
    """Builds ``web/dist`` unless it is newer than every build input; BrowserError if the build fails."""
    built = DIST_DIR / "index.html"
    inputs = max(_newest_mtime(WEB_DIR / name) for name in BUILD_INPUTS if (WEB_DIR / name).exists())
    if built.is_file() and built.stat().st_mtime >= inputs:
        return
    try:
        result = subprocess.run(
            ["npm", "run", "build"],
            cwd=WEB_DIR,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrowserError(f"npm run build could not run: {exc}") from exc
    if result.returncode != 0:
        raise BrowserError(f"npm run build failed:\n{result.stdout}\n{result.stderr}")


class Driver:
    """One run of ``web/e2e/driver.mjs`` in headless Chromium.

    ``args`` are the driver's own (``--url``, ``--scenario``, ...); its stderr goes to ``log_path``.
    :meth:`run` answers each event with ``on_event`` (events without a handler are refused) and
    returns the report. ``pid`` is the driver's process id while it runs (Chromium's processes are
    its descendants).
    """

    def __init__(self, *args: str, log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.pid: int | None = None
        #: Lines the driver printed that were neither an event nor its report.
        self.other_lines: list[str] = []

    async def run(self, on_event: EventHandler | None = None, timeout: float = DRIVER_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Runs the driver to its end (killed after ``timeout`` s); returns its RESULT report."""
        with self.log_path.open("ab") as log:
            driver = await asyncio.create_subprocess_exec(
                "node", "e2e/driver.mjs", "--chromium", chromium_path(), *self.args,
                cwd=WEB_DIR, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        self.pid = driver.pid
        try:
            async with asyncio.timeout(timeout):
                report = await self._converse(driver, on_event)
                await driver.wait()
        except TimeoutError:
            raise BrowserError(f"the browser driver did not finish within {timeout:g} s{self._log_tail()}") from None
        finally:
            if driver.returncode is None:
                driver.kill()
                await driver.wait()
            self.pid = None
        if report is None:
            raise BrowserError(f"the driver gave no result: {self.other_lines}{self._log_tail()}")
        return report

    async def _converse(self, driver: asyncio.subprocess.Process, on_event: EventHandler | None) -> dict[str, Any] | None:
        assert driver.stdout is not None and driver.stdin is not None
        while line := (await driver.stdout.readline()).decode():
            if line.startswith("RESULT "):
                report: dict[str, Any] = json.loads(line[len("RESULT ") :])
                return report
            if not line.startswith("EVENT "):
                self.other_lines.append(line.rstrip())
                continue
            event = json.loads(line[len("EVENT ") :])
            if on_event is None:
                ack: dict[str, Any] = {"ok": False, "error": f"nobody answers {event['name']}"}
            else:
                ack = await on_event(event)
            driver.stdin.write(f"ACK {json.dumps(ack)}\n".encode())
            await driver.stdin.drain()
        return None

    def _log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:] if self.log_path.is_file() else ""
        return f"\n--- driver log ---\n{text}" if text else ""
