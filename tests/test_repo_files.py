"""What the repository tracks: every shell script passes ShellCheck (Debian's `shellcheck`, which
`scripts/bootstrap-dev` installs), and ShellCheck is shown to fail on a script broken on purpose;
no build output (a compiled binary, or anything over 1 MiB) is committed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import REPO

# The largest file we mean to track is docs/screenshot.png (~270 KB).
MAX_TRACKED_BYTES = 1 << 20

# The first bytes of executables and libraries from a compiler: ELF (Linux), Mach-O, PE.
BINARY_MAGIC = (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"MZ")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, timeout=60).stdout
    # A file deleted in the working tree but still in the index is not there to read.
    return [REPO / name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def is_shell_script(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    with path.open("rb") as f:
        first = f.readline(200)
    if not first.startswith(b"#!"):
        return False
    words = first[2:].split()
    # `#!/bin/bash`, `#!/bin/sh`, `#!/usr/bin/env bash`.
    interpreter = words[1] if len(words) > 1 and words[0].endswith(b"/env") else (words or [b""])[0].split(b"/")[-1]
    return interpreter in (b"sh", b"bash")


def shell_scripts() -> list[Path]:
    return sorted(p for p in tracked() if is_shell_script(p))


def shellcheck(scripts: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("shellcheck")
    assert binary, "shellcheck is not on PATH: scripts/bootstrap-dev installs it (Debian's shellcheck package)"
    # -x follows the `# shellcheck source=...` lines into scripts/lib; paths relative to the root.
    return subprocess.run(
        [binary, "-x", "--format=gcc", *(str(p.relative_to(cwd)) for p in scripts)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_shell_scripts_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in shell_scripts()}
    # By extension, by `#!/usr/bin/env bash`, by `#!/bin/sh`; and not the Python or Perl ones.
    assert {".ci/run", "scripts/test", "scripts/lib/apt.sh", "docker/with-ca-bundle", "docker/standins/influxdb/influx"} <= names
    assert len(names) >= 30, sorted(names)
    assert not any(name.endswith(".py") for name in names)


def test_the_shell_scripts_pass_shellcheck() -> None:
    result = shellcheck(shell_scripts(), REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_fails_on_a_script_broken_on_purpose(tmp_path: Path) -> None:
    original = REPO / "scripts" / "install-tools"
    text = original.read_text()
    needle = 'kill "${pids[@]}"'
    assert needle in text
    broken = tmp_path / "install-tools"
    # Unquoted, as it once was: word splitting and globbing on every PID list.
    broken.write_text(text.replace(needle, "kill ${pids[*]}", 1))
    result = shellcheck([broken], tmp_path)
    assert result.returncode != 0
    assert "[SC2086]" in result.stdout, result.stdout


def test_no_build_output_is_tracked() -> None:
    found = []
    for path in tracked():
        with path.open("rb") as f:
            head = f.read(4)
        size = path.stat().st_size
        if size > MAX_TRACKED_BYTES or any(head.startswith(magic) for magic in BINARY_MAGIC):
            found.append(f"{path.relative_to(REPO)} ({size} bytes, starts {head!r})")
    assert not found, "build output committed (add it to .gitignore and `git rm --cached` it): " + ", ".join(found)
