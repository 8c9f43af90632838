"""InfluxDB line protocol for Stadtpuls readings, built as plain strings.

The schema (the README's "InfluxDB schema" and the generated dashboards follow it)::

    <measurement>,channel=<channel>,device=<device>,kind=<kind>,site=<site> \
value=<float>,anomaly=<int>i,score=<float> <unix ns>

- measurement: the vocabulary name of the measurement (``strain``, ``co2``, ...);
- tags: ``kind`` (``bridge`` or ``school``), ``site``, ``device``, and ``channel`` only for a
  channel's measurement: InfluxDB refuses empty tag values, so a device-level measurement
  has no ``channel`` tag at all. Tags are written sorted by key, as InfluxDB recommends;
- fields: ``value`` (float, in the measurement's unit), ``anomaly`` (integer bit set of
  ``ingest.batch.AnomalyFlag``), ``score`` (float, the anomaly score);
- timestamp: the device timestamp in nanoseconds (write precision ``ns``).

Measurement, tags and timestamp together are the reading key, so rewriting a reading (a
redelivered message, a chunk sent again after a lost response) overwrites it in place.

The registry restricts ids to ``[a-z0-9_-]``, but the builder escapes commas, spaces and
equals signs itself so it stays correct on its own. Characters line protocol cannot carry
at all (newlines and other control characters, and backslashes, which the parser reads as
escapes and which cannot be escaped reliably before a special character or at the end of
a value) are refused with ``ValueError`` when the prefix is built, once per series.

influxdb-client's ``Point`` costs about 8 µs per point; the per-series prefix is built once
and a reading costs one f-string, which is what lets the drain keep up with the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_TAG_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\="})


def _check_representable(text: str, what: str) -> None:
    if not text:
        raise ValueError(f"line protocol has no empty {what}")
    for ch in text:
        if ch == "\\" or ord(ch) < 0x20 or ch == "\x7f":
            raise ValueError(f"line protocol cannot carry {ch!r} in the {what} {text!r}")


def escape_measurement(name: str) -> str:
    """The measurement name with commas and spaces escaped."""
    _check_representable(name, "measurement name")
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    """A tag key or value with commas, spaces and equals signs escaped."""
    _check_representable(text, "tag key or value")
    return text.translate(_TAG_ESCAPES)


def series_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    """``measurement,tag=value,...`` with tags sorted by key and empty values left out."""
    parts = [escape_measurement(measurement)]
    parts.extend(
        f"{escape_tag(key)}={escape_tag(value)}" for key, value in sorted(tags.items()) if value
    )
    return ",".join(parts)


def reading_prefix(kind: str, site: str, device: str, channel: str, measurement: str) -> str:
    """The prefix of every line of one Stadtpuls series (see the module docstring)."""
    return series_prefix(
        measurement, {"kind": kind, "site": site, "device": device, "channel": channel}
    )


def reading_line(prefix: str, ts_ns: int, value: float, anomaly: int, score: float) -> str:
    """One reading as a line; floats use ``repr`` so the stored value is the same double.

    ``repr`` of a non-finite float (``nan``, ``inf``) is not valid line protocol: the
    database refuses the line and the store quarantines it, which is the right outcome for
    a value validation should never have let through.
    """
    return f"{prefix} value={value!r},anomaly={anomaly}i,score={score!r} {ts_ns}"


# ``reading_line`` as a %-template: ``%r`` of a float is its ``repr``, ``%d`` of an int its
# digits, so a line built from it is the very line ``reading_line`` builds.
_LINE_TEMPLATE = "%s value=%r,anomaly=%di,score=%r %d"


def reading_lines(
    prefixes: Sequence[str],
    ts_ns: Sequence[int],
    values: Sequence[float],
    anomalies: Sequence[int],
    scores: Sequence[float],
) -> str:
    """Many readings as one body, lines joined by newlines, each as ``reading_line``
    builds it.

    One ``%`` over a template repeated once per line formats them all inside the
    interpreter's C code: about a third of the cost of one f-string per line.
    """
    n = len(prefixes)
    args: list[str | int | float] = [""] * (5 * n)
    args[0::5] = prefixes
    args[1::5] = values
    args[2::5] = anomalies
    args[3::5] = scores
    args[4::5] = ts_ns
    return "\n".join([_LINE_TEMPLATE] * n) % tuple(args)
