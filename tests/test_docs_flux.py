"""The Flux example queries of README.md and docs/storage.md run, and return rows, on the stored feed.

They run on InfluxDB 1.8's Flux (``/api/v2/query``, through ``influxdb-client``'s query API, as a
user would), against the CLX5 feed as the real sink stored it. 1.8 ships an older Flux than 2.x
(v0.65), so an example that passes here uses nothing newer; the examples keep to functions that
both have.
"""

from __future__ import annotations

import pytest
from conftest import documented_code
from influx.harness import InfluxStack
from influxdb_client.rest import ApiException

pytest_plugins = ["influx.fixtures"]  # the real InfluxDB 1.8 and the CLX5 feed stored in it


def test_every_flux_example_in_the_readme_and_the_storage_docs_returns_rows(influx_with_clx5: InfluxStack) -> None:
    blocks = documented_code("flux")
    assert len(blocks) >= 5, "the README or the storage docs lost their Flux examples"
    for block in blocks:
        records = influx_with_clx5.flux(block)  # raises on a Flux error, also one met while streaming
        assert records, f"no rows from the documented query:\n{block}"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ('from(bucket: "mbostream")\n  |> range(start: -1h\n', "expected RPAREN"),
        ('from(bucket: "mbostream")\n  |> range(start: -1h)\n  |> notInThisFlux()\n', 'undefined identifier "notInThisFlux"'),
    ],
    ids=["syntax", "unknown-function"],
)
def test_a_query_the_engine_cannot_run_raises(influx_with_clx5: InfluxStack, query: str, error: str) -> None:
    """What lets the test above fail: a broken example, or one using a function 1.8 lacks, raises."""
    with pytest.raises(ApiException) as caught:
        influx_with_clx5.flux(query)
    assert error in str(caught.value.body) + str(caught.value.headers), caught.value
