"""Dashboards as code, checked offline: generated JSON up to date and deterministic, parsed back by
Grafana's typed model (grafana-foundation-sdk, generated from Grafana's schemas), laid out on the
grid without overlaps, every query valid PromQL (promtool parses it as a rule), the provisioning
files consistent with the dashboards. Whether each query's metrics exist is checked against a live
scrape in tests/test_observability.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from server_harness import repo

GRAFANA: Final = repo() / "observability" / "grafana"
GENERATOR: Final = GRAFANA / "generate.py"
DASHBOARDS: Final = sorted((GRAFANA / "dashboards").glob("*.json"))
#: The sections the issue asks for, by dashboard uid.
EXPECTED: Final = {"mbostream-feed", "mbostream-latency", "mbostream-clients", "mbostream-storage", "mbostream-bus"}
#: Grafana unit ids the generator may use (Grafana's valueFormats registry).
UNITS: Final = {"s", "ops", "reqps", "bytes", "percentunit", "short", "none"}
PANEL_TYPES: Final = {"row", "timeseries", "stat", "heatmap"}
GRID_COLUMNS: Final = 24


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=120)


def test_the_checked_in_dashboards_are_what_the_generator_makes() -> None:
    result = _generate("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {_load(p)["uid"] for p in DASHBOARDS} == EXPECTED


def test_a_hand_edit_is_caught_as_stale(tmp_path: Path) -> None:
    shutil.copytree(GRAFANA / "dashboards", tmp_path / "dashboards")
    edited = tmp_path / "dashboards" / "mbostream-feed.json"
    edited.write_text(edited.read_text().replace("Records applied per second", "Records per second"))
    result = _generate("--check", "--out", str(tmp_path / "dashboards"))
    assert result.returncode == 1
    assert "-      \"title\": \"Records per second\"" in result.stdout


def test_generation_is_deterministic(tmp_path: Path) -> None:
    assert _generate("--out", str(tmp_path)).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert (tmp_path / path.name).read_text() == path.read_text()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_grafanas_typed_model_reads_the_dashboard_back_unchanged(path: Path) -> None:
    """A field Grafana's schema does not know, or a value of the wrong type, would not survive."""
    data = _load(path)
    model = Dashboard.from_json(data)
    assert json.loads(JSONEncoder(sort_keys=True).encode(model)) == data


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    data = _load(path)
    assert data["title"].startswith("mbostream / ") and data["description"]
    assert len(data["uid"]) <= 40 and re.fullmatch(r"[a-z0-9-]+", data["uid"])
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids)) and all(i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in data["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, panel["title"]
        assert panel["options"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs == [chr(ord("A") + i) for i in range(len(refs))] and refs, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            if panel["type"] == "heatmap":
                assert target["format"] == "heatmap" and panel["options"]["calculate"] is False


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's $__ intervals given a value)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: run scripts/bootstrap-dev (Debian package prometheus)"
    rules = []
    for path in DASHBOARDS:
        for panel in _load(path)["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "1m")
                assert "$" not in expr, f"{panel['title']}: a variable promtool cannot check: {expr}"
                rules.append({"record": f"panel:{path.stem.replace('-', '_')}:{panel['id']}{target['refId']}", "expr": expr})
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "panels.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_a_promql_typo_is_caught(tmp_path: Path) -> None:
    """The PromQL check above can fail: one unbalanced parenthesis makes promtool refuse the file."""
    promtool = shutil.which("promtool")
    assert promtool
    rule = {"record": "panel:typo", "expr": "sum(rate(mbostream_records_ingested_total[1m])"}
    (tmp_path / "typo.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": [rule]}]}))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "typo.yml")], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_provisioning_points_at_the_dashboards_and_their_datasource() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "mbostream.yml").read_text())["datasources"]
    by_type = {d["type"]: d for d in datasources}
    assert set(by_type) == {"prometheus", "influxdb"}
    assert by_type["prometheus"]["isDefault"] is True  # what the dashboards' datasource variable picks
    assert by_type["influxdb"]["jsonData"]["version"] == "Flux" and "token" in by_type["influxdb"]["secureJsonData"]
    assert len({d["uid"] for d in datasources}) == len(datasources)
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "mbostream.yml").read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"].startswith("/var/lib/grafana/dashboards")
