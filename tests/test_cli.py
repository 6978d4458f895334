"""The command line as other projects' scripts call it: output schema, exit codes, clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from mbostream_core.dbn import read_records


def mbostream(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


def test_book_json_schema_on_clx5() -> None:
    out = json.loads(mbostream("book", str(shared_file("CLX5_mbo.dbn")), "--depth", "5").stdout)
    (inst,) = out["instruments"]
    for field in ("instrument_id", "publisher_id", "symbol", "ts_event", "ts_recv", "sequence", "crossed", "bids", "asks", "anomalies"):
        assert field in inst
    assert inst["symbol"] == "CLX5" and inst["instrument_id"] == 432669
    assert len(inst["bids"]) == 5 and len(inst["asks"]) == 5
    level = inst["bids"][0]
    assert set(level) == {"price", "size", "count"}
    assert level["price"].count(".") == 1 and len(level["price"].split(".")[1]) == 9
    bids = [float(l["price"]) for l in inst["bids"]]
    asks = [float(l["price"]) for l in inst["asks"]]
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert inst["crossed"] is True
    assert inst["anomalies"]["cancel_unknown_order"] == 1224


def test_book_orders_and_full_depth() -> None:
    out = json.loads(mbostream("book", str(shared_file("CLX5_mbo.dbn")), "--orders", "--indent", "0").stdout)
    (inst,) = out["instruments"]
    assert len(inst["bids"]) == 61 and len(inst["asks"]) == 52
    total = 0
    for level in inst["bids"] + inst["asks"]:
        assert level["count"] == len(level["orders"])
        assert level["size"] == sum(o["size"] for o in level["orders"])
        total += level["count"]
    assert total == 147


def test_book_instrument_selection_and_at_sequence(generated_small: Path) -> None:
    info, records = read_records(generated_small)
    symbols = sorted(info.symbols.values())
    out = json.loads(mbostream("book", str(generated_small), "--instrument", symbols[0], "--depth", "1").stdout)
    assert [i["symbol"] for i in out["instruments"]] == [symbols[0]]
    by_id = json.loads(
        mbostream("book", str(generated_small), "--instrument", str(out["instruments"][0]["instrument_id"])).stdout
    )
    assert by_id["instruments"][0]["symbol"] == symbols[0]
    mid = int(records["sequence"][len(records) // 2])
    at = json.loads(mbostream("book", str(generated_small), "--at-sequence", str(mid)).stdout)
    for inst in at["instruments"]:
        assert inst["sequence"] <= mid
    final = json.loads(mbostream("book", str(generated_small)).stdout)
    assert at != final


def test_book_at_sequence_matches_a_truncated_replay() -> None:
    path = shared_file("CLX5_mbo.dbn")
    _, records = read_records(path)
    cut = 20_000
    while not records["flags"][cut] & 0x80:
        cut += 1
    seq = int(records["sequence"][cut])
    at = json.loads(mbostream("book", str(path), "--at-sequence", str(seq), "--orders").stdout)
    from mbostream_core.market import Market

    market = Market({432669: "CLX5"})
    market.apply(records[: cut + 1])
    view = market.view(market.resolve("CLX5"), orders=True)
    assert at["instruments"][0]["sequence"] == view.sequence == seq
    assert [l["orders"] for l in at["instruments"][0]["bids"]] == [
        [{"order_id": o, "size": s} for o, s in level.orders] for level in view.bids
    ]


def test_book_table_format() -> None:
    out = mbostream("book", str(shared_file("CLX5_mbo.dbn")), "--depth", "3", "--format", "table").stdout
    assert "CLX5" in out and "CROSSED" in out
    assert out.count("\n") >= 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.dbn", "no such file"),
        (lambda d: _write(d / "text.dbn", b"hello, this is not DBN at all\n" * 10), "not a DBN file"),
        (lambda d: _write(d / "short.dbn", b"DB"), "DBN prefix"),
        (lambda d: _truncated(d / "trunc.dbn"), "file ends inside a record"),
        (lambda d: _write(d / "trunc-meta.dbn", shared_file("CLX5_mbo.dbn").read_bytes()[:200]), "inside the metadata"),
        (lambda d: shared_file("fixtures/dbn_test_data.mbp-10.dbn"), "schema is 'mbp-10'"),
        (lambda d: _write(d / "garbage.dbn.zst", b"\x28\xb5\x2f\xfd" + b"\x00" * 40), "not a DBN file"),
    ],
    ids=["missing", "not-dbn", "short", "truncated", "truncated-metadata", "wrong-schema", "bad-zstd"],
)
def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    for command in ("book", "audit"):
        proc = mbostream(command, str(path), check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert message in proc.stderr
        assert proc.stderr.startswith(f"mbostream {command}: error: ")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path) -> Path:
    return _write(path, shared_file("CLX5_mbo.dbn").read_bytes()[:100_000])


def test_unknown_instrument_is_a_clear_error(generated_small: Path) -> None:
    proc = mbostream("book", str(generated_small), "--instrument", "NOPE", check=False)
    assert proc.returncode == 2
    assert "unknown instrument symbol='NOPE'" in proc.stderr


def test_generate_is_deterministic_and_structured(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.dbn", tmp_path / "b.dbn", tmp_path / "c.dbn.zst"
    summary = json.loads(mbostream("generate", "--out", str(a), "--records", "30000", "--instruments", "2", "--seed", "5").stdout)
    mbostream("generate", "--out", str(b), "--records", "30000", "--instruments", "2", "--seed", "5")
    mbostream("generate", "--out", str(c), "--records", "30000", "--instruments", "2", "--seed", "6")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    info, records = read_records(a)
    _, other = read_records(c)
    assert len(records) == 30000 and not np.array_equal(records, other)
    assert info.schema == "mbo" and info.dataset == "GLBX.MDP3"
    assert sorted(info.symbols.values()) == sorted(i["symbol"] for i in summary["instruments"])
    assert np.all(np.diff(records["ts_recv"].astype(np.int64)) > 0)
    for iid in info.symbols:
        mine = records[records["instrument_id"] == iid]
        assert mine["action"][0] == b"R" and mine["flags"][0] & 0x20
        snap_end = int(np.flatnonzero(~(mine["flags"] & 0x20).astype(bool))[0])
        assert mine["flags"][snap_end - 1] & 0x80  # the snapshot ends with F_LAST
        live = mine[snap_end:]
        assert set(live["action"].tobytes().decode()) >= set("ACMTF")
    assert records["flags"][-1] & 0x80


def test_bench_book_runs_and_reports(generated_small: Path) -> None:
    out = json.loads(mbostream("bench", "book", str(generated_small), "--json").stdout)
    assert out["throughput"]["records"] == 60_000
    assert out["throughput"]["records_per_second"] > 0
    lat = out["apply_latency_per_event"]
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["p99_9_us"]
    assert out["peak_rss_mib"] > 0


def test_audit_json_and_strict_exit(generated_small: Path) -> None:
    proc = mbostream("audit", str(generated_small), "--json", "--strict")
    report = json.loads(proc.stdout)
    assert report["engine_integrity"]["violations"] == 0
    assert report["records"] == 60_000

