"""The Flux example queries in README.md and docs/storage.md parse, with Flux's own parser.

No InfluxDB 2.x server can be installed here, so the Flux examples cannot be run; the InfluxQL ones
are run against InfluxDB 1.6 by the storage tests. This checks syntax (``tests/fluxcheck``, Flux's
pure-Go parser), not whether each function exists or the results are right.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import documented_code

FLUXCHECK = Path(__file__).resolve().parent / "fluxcheck"
BUILD_TIMEOUT_SECONDS = 600


@pytest.fixture(scope="module")
def fluxcheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (CI has it: scripts/bootstrap-dev uses it for protoc-gen-go and grpcurl)")
    binary = tmp_path_factory.mktemp("fluxcheck") / "fluxcheck"
    build = subprocess.run([go, "build", "-o", str(binary), "."], cwd=FLUXCHECK, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
    assert build.returncode == 0, build.stderr
    return binary


def test_every_flux_example_in_the_readme_and_the_storage_docs_parses(fluxcheck: Path, tmp_path: Path) -> None:
    blocks = documented_code("flux")
    assert len(blocks) >= 5, "the README or the storage docs lost their Flux examples"
    files = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"example-{i}.flux"
        path.write_text(block)
        files.append(str(path))
    result = subprocess.run([str(fluxcheck), *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok") == len(blocks)


def test_a_broken_query_is_reported_with_its_position(fluxcheck: Path, tmp_path: Path) -> None:
    path = tmp_path / "broken.flux"
    path.write_text('from(bucket: "mbostream")\n  |> range(start: -1h\n  |> filter(fn: (r) => r._measurement == "bbo")\n')
    result = subprocess.run([str(fluxcheck), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "broken.flux:" in result.stdout and "expected" in result.stdout, result.stdout
