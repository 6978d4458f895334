"""Shared fixtures: paths to the real Databento data beside the repo, small generated files, and the
example code of the docs."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Final

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
#: The documents whose example queries the tests check.
DOCUMENTED_QUERIES = (REPO / "README.md", REPO / "docs" / "storage.md")

# Tests press Ctrl-C on the programs they start (SIGINT), as a user at a terminal would. A suite
# started as a background job of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored,
# and so would every child: Python then installs no KeyboardInterrupt handler, and a client told
# to stop keeps running (a CI rehearsal started that way failed so). A handler here becomes the
# default action in each child at exec, which is what a terminal gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or a skip with the reason when the shared data is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real Databento data not available: {path} is absent (it ships beside the repo in CI)")
    return path


@pytest.fixture(scope="session")
def generated_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60,000-record generated file (3 instruments), made once per test session."""
    from mbostream_core.synth import generate_file

    path = tmp_path_factory.mktemp("synth") / "small.mbo.dbn"
    generate_file(path, records=60_000, instruments=3, seed=11)
    return path


def documented_code(language: str) -> list[str]:
    """The bodies of every fenced ``language`` block of the README and the storage docs, in order."""
    text = "".join(path.read_text() for path in DOCUMENTED_QUERIES)
    return re.findall(rf"```{re.escape(language)}\n(.*?)```", text, re.S)


# --- Strict CI: a skipped test is a layer that did not run -------------------------------------
#
# Under CI (CI=true), any skipped or xfailed test fails the run unless its node id is listed here
# with the reason it may not run on our machines. `.ci/run` installs everything the tests need, so
# this list is meant to stay empty; an entry is a debt, written down where everyone sees it.
ALLOWED_SKIPS: dict[str, str] = {}


def _strict_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


_unexpected_skips: list[tuple[str, str]] = []


#: Test files run after all the others, in this order: scripts/test builds what they need in the
#: background while the rest of the suite runs (cold: the OpenTelemetry Collector ~3 min, Docker
#: Compose ~4.5 min, the SBOM tools ~8 min, the Kubernetes control plane ~5.5 min). scripts/test runs
#: them in a second pytest beside the rest (``--run-last only`` there, ``skip`` here).
RUN_LAST: Final = ("test_tracing.py", "test_compose.py", "test_audit_deps.py", "test_k8s_apply.py")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-last",
        choices=("after", "skip", "only"),
        default="after",
        help="the test files of tests/conftest.py RUN_LAST: after all the others (default), "
        "left out (skip), or alone (only); scripts/test runs 'skip' and 'only' side by side",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Moves the tests of RUN_LAST to the end, keeping every other order as collected; with
    ``--run-last skip`` or ``only``, deselects them or all the others (reported as deselected,
    which strict CI does not count as skipped)."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return RUN_LAST.index(name) + 1 if name in RUN_LAST else 0

    mode = config.getoption("--run-last")
    if mode != "after":
        keep = [item for item in items if (rank(item) > 0) == (mode == "only")]
        dropped = [item for item in items if (rank(item) > 0) != (mode == "only")]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
    items.sort(key=rank)  # stable: equal ranks keep their order


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skip (in setup or call) that the allow-list does not name."""
    if not report.skipped or report.nodeid in ALLOWED_SKIPS:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if hasattr(report, "wasxfail"):
        reason = f"xfail: {report.wasxfail}"
    _unexpected_skips.append((report.nodeid, reason))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module skipped at collection (importorskip, a module-level skip) is a skip too."""
    if report.skipped and report.nodeid not in ALLOWED_SKIPS:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _unexpected_skips.append((report.nodeid, reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI, fail a run that skipped anything not on the allow-list, naming each skip."""
    if not _strict_ci() or not _unexpected_skips:
        return
    lines = [f"  {nodeid}: {reason}" for nodeid, reason in _unexpected_skips]
    message = (
        f"\nCI=true: {len(_unexpected_skips)} test(s) skipped that must run here "
        "(install what they name, or list them in tests/conftest.py ALLOWED_SKIPS with a reason):\n"
        + "\n".join(lines)
    )
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.write_line(message, red=True, bold=True)
    else:
        print(message, file=sys.stderr)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
