"""Strict CI (issue 9): under ``CI=true`` a skipped test fails the run, naming the test and what it lacks.

Each case runs pytest in a child process on a folder holding a copy of this suite's ``conftest.py``
(the hooks under test, unchanged) and one small test module, so the child's exit code and output
are the ones ``make test`` (and so ``.ci/run``) would see. The browser case is the issue's own
example: Chromium "renamed away" (``CHROMIUM_PATH`` naming a file that is not there) turns the
browser layer's skip into a failed run whose message names Chromium.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CHILD_TIMEOUT_SECONDS = 120
SUMMARY = "test(s) skipped that must run here"

#: The browser layer's guard as tests/test_web_e2e.py has it: skip with what is missing.
BROWSER_LAYER = '''
import pytest
from mbostream.tools.browser import missing_requirement


def test_browser_layer():
    missing = missing_requirement()
    if missing is not None:
        pytest.skip(missing)
'''


def _pytest_in(folder: Path, module: str, *, ci: str | None, allowed: dict[str, str] | None = None,
               env: dict[str, str] | None = None, files: dict[str, str] | None = None,
               args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """pytest (with ``args``) on ``folder`` holding ``test_layer.py`` (``module``), ``files`` (name:
    text) if given, and a copy of tests/conftest.py."""
    conftest = (HERE / "conftest.py").read_text()
    empty = "ALLOWED_SKIPS: dict[str, str] = {}"
    assert conftest.count(empty) == 1, "tests/conftest.py no longer declares an empty ALLOWED_SKIPS"
    if allowed is not None:
        conftest = conftest.replace(empty, f"ALLOWED_SKIPS: dict[str, str] = {allowed!r}")
    (folder / "conftest.py").write_text(conftest)
    (folder / "test_layer.py").write_text(module)
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    (folder / "pytest.ini").write_text("[pytest]\n")
    child_env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        child_env["CI"] = ci
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args, "."],
        cwd=folder, env=child_env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip


def test_a_missing_chromium_fails_a_ci_run_with_a_message_naming_it(tmp_path: Path) -> None:
    renamed_away = tmp_path / "renamed-away" / "chromium"
    env = {"CHROMIUM_PATH": str(renamed_away)}
    strict = _pytest_in(tmp_path, BROWSER_LAYER, ci="true", env=env)
    assert strict.returncode == pytest.ExitCode.TESTS_FAILED, strict.stdout[-3000:] + strict.stderr[-2000:]
    assert f"CI=true: 1 {SUMMARY}" in strict.stdout, strict.stdout[-3000:]
    assert f"test_layer.py::test_browser_layer: Skipped: no Chromium at {renamed_away}" in strict.stdout, strict.stdout[-3000:]
    # The same run outside CI is a skip, and passes: only CI=true makes it a failure.
    relaxed = _pytest_in(tmp_path, BROWSER_LAYER, ci=None, env=env)
    assert relaxed.returncode == pytest.ExitCode.OK, relaxed.stdout[-3000:]
    assert "1 skipped" in relaxed.stdout and SUMMARY not in relaxed.stdout, relaxed.stdout[-3000:]


@pytest.mark.parametrize(
    ("module", "nodeid", "reason"),
    [
        ("import pytest\n\ndef test_x():\n    pytest.skip('grpcurl is not installed')\n",
         "test_layer.py::test_x", "grpcurl is not installed"),
        ("import pytest\n\n@pytest.mark.skipif(True, reason='no gzip binary')\ndef test_x():\n    pass\n",
         "test_layer.py::test_x", "no gzip binary"),
        ("import pytest\n\n@pytest.mark.xfail(reason='known to fail')\ndef test_x():\n    assert False\n",
         "test_layer.py::test_x", "known to fail"),
        ("import pytest\n\npytest.importorskip('no_such_module_mbostream')\n\ndef test_x():\n    pass\n",
         "test_layer.py", "no_such_module_mbostream"),
    ],
    ids=["skip-in-test", "skipif-mark", "xfail", "module-skipped-at-collection"],
)
def test_every_kind_of_skip_fails_a_ci_run_unless_the_allow_list_names_it(
    tmp_path: Path, module: str, nodeid: str, reason: str
) -> None:
    # Beside a test that runs, as in the suite (a module skipped whole with nothing else collected
    # ends with pytest's own exit code 5, which fails the run anyway).
    passing = "def test_ok():\n    pass\n"
    strict = _pytest_in(tmp_path, module, ci="true", files={"test_other.py": passing})
    assert strict.returncode == pytest.ExitCode.TESTS_FAILED, strict.stdout[-3000:]
    assert f"CI=true: 1 {SUMMARY}" in strict.stdout, strict.stdout[-3000:]
    listed = [line for line in strict.stdout.splitlines() if line.startswith(f"  {nodeid}: ")]
    assert len(listed) == 1 and reason in listed[0], strict.stdout[-3000:]
    # An allow-list entry (with its reason) lets that one skip pass under CI.
    allowed = _pytest_in(tmp_path, module, ci="true", allowed={nodeid: "documented reason"}, files={"test_other.py": passing})
    assert allowed.returncode == pytest.ExitCode.OK, allowed.stdout[-3000:]
    assert SUMMARY not in allowed.stdout, allowed.stdout[-3000:]


def test_a_ci_run_without_skips_passes_and_a_failing_one_keeps_its_failure(tmp_path: Path) -> None:
    clean = _pytest_in(tmp_path, "def test_x():\n    pass\n", ci="true")
    assert clean.returncode == pytest.ExitCode.OK and "1 passed" in clean.stdout, clean.stdout[-3000:]
    both = _pytest_in(
        tmp_path, "import pytest\n\ndef test_a():\n    assert False\n\ndef test_b():\n    pytest.skip('no envoy')\n", ci="true"
    )
    assert both.returncode == pytest.ExitCode.TESTS_FAILED, both.stdout[-3000:]
    assert "1 failed" in both.stdout and f"CI=true: 1 {SUMMARY}" in both.stdout, both.stdout[-3000:]


@pytest.mark.parametrize(
    ("mode", "ran", "deselected"),
    [
        ("after", ["test_layer.py::test_a", "test_tracing.py::test_t", "test_compose.py::test_c"], 0),
        ("skip", ["test_layer.py::test_a"], 2),
        ("only", ["test_tracing.py::test_t", "test_compose.py::test_c"], 1),
    ],
)
def test_run_last_splits_the_suite_in_two_that_strict_ci_counts_as_whole(
    tmp_path: Path, mode: str, ran: list[str], deselected: int
) -> None:
    """scripts/test runs ``--run-last skip`` and ``--run-last only`` side by side: together they run
    every test once, the files of RUN_LAST in RUN_LAST's order (test_tracing.py before
    test_compose.py, against the order of their names), and what each leaves to the other is
    deselected, which strict CI does not take for a skip. Without the option (``after``) the files
    of RUN_LAST run after the rest."""
    run_last = {name: f"def test_{name[5]}():\n    pass\n" for name in ("test_compose.py", "test_tracing.py")}
    out = _pytest_in(tmp_path, "def test_a():\n    pass\n", ci="true", files=run_last, args=("-v", "--run-last", mode))
    assert out.returncode == pytest.ExitCode.OK, out.stdout[-3000:] + out.stderr[-2000:]
    assert [line.split(" ")[0] for line in out.stdout.splitlines() if " PASSED" in line] == ran, out.stdout[-3000:]
    assert f"{len(ran)} passed" in out.stdout and SUMMARY not in out.stdout, out.stdout[-3000:]
    assert (f"{deselected} deselected" in out.stdout) == (deselected > 0), out.stdout[-3000:]
