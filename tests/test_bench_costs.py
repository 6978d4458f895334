"""``mbostream bench costs`` runs end to end (a real grpc.aio server process) and its model is the
arithmetic of its own measurements. The figures themselves are benchmarks, not checked here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_bench_costs_measures_every_unit_and_models_the_500k_scenario() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mbostream.cli", "bench", "costs", "--records", "200000", "--streams", "10",
         "--messages", "2000", "--json"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    engine, hub, book, event, model = (result[k] for k in ("engine", "hub", "grpc_book_message", "grpc_event_message", "model"))
    assert engine["records"] > 150_000 and engine["books"] == 4
    for value in (engine["apply_ns_per_record"], engine["hub_publish_us_per_batch"], engine["encode_us_per_batch"], engine["book_payload_us"],
                  hub["hub_us_per_book_message"], book["server_us_per_message"], event["server_us_per_message"]):  # fmt: skip
        assert value > 0
    assert 0 < engine["book_message_bytes"] < engine["event_message_bytes"] == event["payload_bytes"]
    assert book["messages"] == 2000 and book["streams"] == 10
    # The model is its inputs' arithmetic.
    steps = 500_000 / engine["batch_records"]
    replay = 500_000 * engine["apply_ns_per_record"] / 1e9 + steps * engine["hub_publish_us_per_batch"] / 1e6
    assert model["replay_core_share"] == pytest.approx(replay, abs=1e-3)
    per_refresh = 4 * engine["book_payload_us"] / 1e6 + 100 * 4 * (hub["hub_us_per_book_message"] + book["server_us_per_message"]) / 1e6
    assert model["book_core_share_per_refresh_hz"] == pytest.approx(per_refresh, rel=1e-3, abs=1e-5)
    budget = 0.6 - model["replay_core_share"] - model["events_core_share_one_stream"]
    assert model["refresh_hz_fitting_60_percent"] == pytest.approx(max(0.0, budget / per_refresh), abs=0.2)


def test_calibrate_applies_on_the_cpus_given_and_gives_the_thread_its_cpus_back() -> None:
    from mbostream.tools.bench_costs import calibrate

    before = os.sched_getaffinity(0)
    cpu = max(before)
    result = calibrate({cpu}, records=20_000, passes=3)
    assert os.sched_getaffinity(0) == before
    assert (result["cpus"], result["records"], result["passes"]) == ([cpu], 20_000, 3)
    assert 0 < result["apply_ns_per_record"] <= result["apply_wall_ns_per_record"] + 0.1
    # None: wherever the thread runs, unpinned.
    assert calibrate(None, records=20_000, passes=1)["cpus"] is None
