"""A small, independent line-protocol parser for tests (the subset the sink writes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: dict[str, int | bool | str]
    time: int

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...], int]:
        """What InfluxDB identifies a point by: measurement, tag set, time."""
        return self.measurement, self.tags, self.time


_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t"}


def _split(text: str, sep: str) -> list[str]:
    """Splits at unescaped ``sep``; keeps escapes for the next stage."""
    if "\\" not in text:
        return text.split(sep)
    parts, current, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(_UNESCAPE.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _value(text: str) -> int | bool | str:
    if text.endswith("i"):
        return int(text[:-1])
    if text in ("true", "false"):
        return text == "true"
    if text.startswith('"'):
        return text[1:-1]
    raise ValueError(f"unexpected field value {text!r}")


def parse_line(line: str) -> Point:
    series, fields_text, time_text = _split(line, " ")
    measurement, *tag_texts = _split(series, ",")
    tags = tuple((_unescape(k), _unescape(v)) for k, v in (_split(t, "=") for t in tag_texts))
    fields = {_unescape(k): _value(v) for k, v in (_split(f, "=") for f in _split(fields_text, ","))}
    return Point(_unescape(measurement), tags, fields, int(time_text))


def parse(payload: bytes) -> list[Point]:
    return [parse_line(line) for line in payload.decode().splitlines() if line and not line.startswith("#")]
