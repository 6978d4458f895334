"""Synthetic data room: the project's own deterministic CME-style MBO feed, written as DBN.

The generator itself is native (``mbostream-synth``); this module frames its records as a DBN v3
file with metadata and symbology, optionally zstd-compressed, and caches the default sample.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import databento_dbn
import zstandard

from mbostream_core import _engine

#: First record's timestamp: 2026-01-05 14:30:00 UTC (a Monday, US cash open). Fixed for determinism.
SYNTH_START_TS: Final = 1_767_623_400_000_000_000
SYNTH_DATASET: Final = "GLBX.MDP3"
#: The sample `mbostream serve` uses when given no file.
DEFAULT_SAMPLE_RECORDS: Final = 2_000_000
DEFAULT_SAMPLE_INSTRUMENTS: Final = 4
DEFAULT_SAMPLE_SEED: Final = 1


@dataclass(frozen=True)
class _Interval:
    start_date: dt.date
    end_date: dt.date
    symbol: str


@dataclass(frozen=True)
class _Mapping:
    raw_symbol: str
    intervals: list[_Interval]


def _metadata(specs: list[tuple[int, int, str, int, int]], end: int | None) -> bytes:
    day = dt.date(2026, 1, 5)
    mappings = [
        _Mapping(symbol, [_Interval(day, day + dt.timedelta(days=1), str(iid))]) for iid, _, symbol, _, _ in specs
    ]
    metadata = databento_dbn.Metadata(
        dataset=SYNTH_DATASET,
        start=SYNTH_START_TS,
        end=end,
        stype_in=databento_dbn.SType.RAW_SYMBOL,
        stype_out=databento_dbn.SType.INSTRUMENT_ID,
        schema=databento_dbn.Schema.MBO,
        symbols=[s for _, _, s, _, _ in specs],
        partial=[],
        not_found=[],
        mappings=mappings,
    )
    return bytes(metadata.encode())


def generate_file(out: str | os.PathLike[str], *, records: int, instruments: int, seed: int) -> dict[str, Any]:
    """Writes ``records`` synthetic MBO records for ``instruments`` instruments to ``out`` as DBN.

    A name ending in ``.zst`` is zstd-compressed. The same arguments always give the same bytes.
    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as body:
            specs = _engine.generate(
                body.write, seed=seed, records=records, instruments=instruments, start_ts=SYNTH_START_TS
            )
        # The metadata (symbols) is known only after generation: write it, then the body behind it.
        header = _metadata(specs, end=None)
        with open(tmp_name, "rb") as body, open(tmp_name + ".dbn", "wb") as dbn:
            sink = zstandard.ZstdCompressor(level=3, threads=0).stream_writer(dbn) if path.suffix == ".zst" else dbn
            sink.write(header)
            while chunk := body.read(1 << 22):
                sink.write(chunk)
            if sink is not dbn:
                sink.flush(zstandard.FLUSH_FRAME)
        os.replace(tmp_name + ".dbn", path)
    finally:
        for leftover in (tmp_name, tmp_name + ".dbn"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return {
        "path": str(path),
        "records": records,
        "seed": seed,
        "instruments": [{"instrument_id": i, "symbol": s, "tick": t, "start_price": p} for i, _, s, t, p in specs],
    }


def cache_dir() -> Path:
    """Where generated samples are cached (``MBOSTREAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/mbostream``)."""
    explicit = os.environ.get("MBOSTREAM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mbostream"


def ensure_sample(
    records: int = DEFAULT_SAMPLE_RECORDS,
    instruments: int = DEFAULT_SAMPLE_INSTRUMENTS,
    seed: int = DEFAULT_SAMPLE_SEED,
) -> Path:
    """The cached sample file for these parameters, generated once if missing."""
    path = cache_dir() / f"synth-{instruments}i-{records}r-seed{seed}.mbo.dbn"
    if not path.exists():
        generate_file(path, records=records, instruments=instruments, seed=seed)
    return path
