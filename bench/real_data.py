"""Public sensor data sets for judging the anomaly check on real readings.

Each loader parses the publishers' own file format (plain or gzipped) into what the check
takes: a registry (YAML, as an operator would write it) and columns ``series`` (index into
the registry's series), ``ts_ns`` (UTC, ns since the epoch) and ``values`` (in the
vocabulary's units), sorted by (series, ts_ns), plus the windows where the data are known
to do something unusual (a gap in the published recording, a real support settlement).

- ``occupancy``: UCI "Occupancy Detection" (Candanedo & Feldheim 2016): an office in Mons,
  Belgium, February 2015; temperature, humidity, light and CO2 about once a minute, with
  occupancy labels from photographs. No faults are documented.
- ``munich_1hz`` and ``munich_100hz``: the test bridge of UniBw Munich (munich-bridge-data,
  Jaelani et al. 2023): one strain gauge at 100 Hz and the air temperature at 1 Hz through
  a day of support-lowering tests on 2022-04-11. ``munich_1hz`` is every recorded segment as
  1-second means (strain paired with the temperature); ``munich_100hz`` is one load-test
  segment at the full rate.

Where the files are: ``bench/data/<name>/`` (see its SOURCE.md), else ``$STADTPULS_REAL_DATA``
or a ``real_data`` folder of ``shared/`` beside the checkout; ``data_dir`` says which.
``make_excerpts`` writes those folders from the original files.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from devices.registry import Registry, parse_registry
from devices.vocabulary import VOCABULARY, SiteKind, conversion

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

NS: Final = 1_000_000_000
MIN: Final = 60 * NS

DATA_DIR: Final = Path(__file__).resolve().parent / "data"
ENV_VAR: Final = "STADTPULS_REAL_DATA"

WindowKind = Literal["recording_gap", "settlement", "load_test", "implausible"]


@dataclass(frozen=True)
class KnownWindow:
    """A stretch of one series where the data do something on purpose or by publication:
    flags there are explained, not false. ``recording_gap`` is the silence between two
    published files (it ends at the first reading after it); ``implausible`` a reading the
    physics rules out by the data set's own ground truth (CO2 rising fast in a room that
    has been empty for half an hour), which is a sensor fault the publishers did not
    label."""

    series: int
    kind: WindowKind
    start_ns: int
    end_ns: int
    note: str = ""


@dataclass(frozen=True)
class RealData:
    name: str
    title: str
    registry_yaml: str
    series: I32
    ts_ns: I64
    values: F64
    windows: tuple[KnownWindow, ...]
    # Per reading: the room was occupied (occupancy only; all False elsewhere).
    occupied: Bool

    def __post_init__(self) -> None:
        n = len(self.series)
        if not len(self.ts_ns) == len(self.values) == len(self.occupied) == n:
            raise ValueError("columns differ in length")
        s, t = self.series, self.ts_ns
        if n > 1 and bool(np.any((s[1:] < s[:-1]) | ((s[1:] == s[:-1]) & (t[1:] <= t[:-1])))):
            raise ValueError("readings must be sorted by (series, ts_ns) without repeats")

    def __len__(self) -> int:
        return len(self.series)

    def registry(self) -> Registry:
        return parse_registry(self.registry_yaml, f"bench/real_data.py ({self.name})")


# --- where the files are ----------------------------------------------------------------------


def data_dir(name: str) -> Path | None:
    """The folder holding data set ``name``: ``$STADTPULS_REAL_DATA/<name>``, then
    ``bench/data/<name>``, then ``shared/real_data/<name>`` beside the checkout; None when
    none of them has its files."""
    candidates = []
    if env := os.environ.get(ENV_VAR):
        candidates.append(Path(env) / name)
    candidates += [DATA_DIR / name, DATA_DIR.parents[2] / "shared" / "real_data" / name]
    for c in candidates:
        if c.is_dir() and any(p.name != "SOURCE.md" for p in c.rglob("*") if p.is_file()):
            return c
    return None


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return io.TextIOWrapper(path.open("rb"), encoding=encoding, newline="")


def _find(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def local_to_utc_ns(naive: npt.NDArray[np.datetime64], tz: str) -> I64:
    """Wall-clock times of zone ``tz`` (datetime64, any unit) to UTC ns. The offset is taken
    per distinct hour, so a file crossing a DST change converts right (the repeated hour
    of autumn is read as the first one)."""
    ns = naive.astype("datetime64[ns]").astype(np.int64)
    hours = ns // (3600 * NS)
    zone = ZoneInfo(tz)
    uniq, inv = np.unique(hours, return_inverse=True)
    offsets = np.array(
        [
            int(
                dt.datetime.fromtimestamp(int(h) * 3600, dt.UTC)
                .replace(tzinfo=zone)
                .utcoffset()
                .total_seconds()  # type: ignore[union-attr]
            )
            for h in uniq.tolist()
        ],
        dtype=np.int64,
    )
    return ns - offsets[inv] * NS


# --- UCI Occupancy Detection ------------------------------------------------------------------

OCCUPANCY_FILES: Final = ("datatest.txt", "datatraining.txt", "datatest2.txt")
OCCUPANCY_TZ: Final = "Europe/Brussels"  # Mons, Belgium; the files carry local time
# (column, measurement, unit the publishers give in SenML spelling)
OCCUPANCY_COLUMNS: Final = (
    ("Temperature", "temperature", "Cel"),
    ("Humidity", "humidity", "%"),
    ("Light", "light", "lx"),
    ("CO2", "co2", "ppm"),
)
_SCHOOL_UNITS: Final = {m.name: m.unit for m in VOCABULARY[SiteKind.SCHOOL].values()}
OCCUPANCY_YAML: Final = """\
sites:
  umons-office:
    kind: school
    name: Office room, University of Mons (UCI Occupancy Detection)
    city: Mons
    devices:
      room:
        description: temperature, humidity, light and CO2 about once a minute
        interval: 60s
        measurements: [temperature, humidity, light, co2]
"""


@dataclass(frozen=True)
class OccupancyFile:
    """One file of the UCI set: a row per minute, values in the publishers' units."""

    ts_ns: I64
    columns: dict[str, F64]  # by the publishers' column name
    occupied: Bool


def read_occupancy_file(path: Path) -> OccupancyFile:
    """Parse ``datatraining.txt`` and friends: a header without the row-number column,
    then ``"row","YYYY-MM-DD hh:mm:ss",Temperature,Humidity,Light,CO2,HumidityRatio,
    Occupancy`` (the date is quoted in two files, bare in the third)."""
    with _open_text(path) as f:
        rows = list(csv.reader(f))
    header = rows[0]
    if header[:1] != ["date"] or "Occupancy" not in header:
        raise ValueError(f"{path}: not an Occupancy Detection file (header {header})")
    body = [r for r in rows[1:] if r]
    if any(len(r) != len(header) + 1 for r in body):
        raise ValueError(f"{path}: a row has not {len(header) + 1} fields")
    naive = np.array([r[1] for r in body], dtype="datetime64[s]")
    ts = local_to_utc_ns(naive, OCCUPANCY_TZ)
    cols = {
        name: np.array([float(r[i + 1]) for r in body], dtype=np.float64)
        for i, name in enumerate(header)
        if name != "date"
    }
    occupied = cols.pop("Occupancy") > 0.5
    return OccupancyFile(ts, cols, occupied)


def load_occupancy(folder: Path | None = None) -> RealData:
    """The three published files joined in time order (they do not overlap; the silences
    between them are ``recording_gap`` windows)."""
    folder = folder or data_dir("occupancy")
    if folder is None:
        raise FileNotFoundError("occupancy data not found (see bench/data/occupancy/SOURCE.md)")
    parts = [read_occupancy_file(p) for n in OCCUPANCY_FILES if (p := _find(folder, n))]
    if not parts:
        raise FileNotFoundError(f"{folder}: none of {', '.join(OCCUPANCY_FILES)}")
    ts = np.concatenate([p.ts_ns for p in parts])
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] > ts[:-1]  # a repeated minute keeps its first row
    rows = order[keep]
    ts = ts[keep]
    occupied = np.concatenate([p.occupied for p in parts])[rows]
    series, tss, values, occ = [], [], [], []
    for i, (col, measurement, unit) in enumerate(OCCUPANCY_COLUMNS):
        scale, offset = conversion(unit, _SCHOOL_UNITS[measurement])
        v = np.concatenate([p.columns[col] for p in parts])[rows] * scale + offset
        series.append(np.full(len(ts), i, np.int32))
        tss.append(ts)
        values.append(v)
        occ.append(occupied)
    windows = _gap_windows(ts, len(OCCUPANCY_COLUMNS), 10 * MIN, "between published files")
    co2 = next(i for i, c in enumerate(OCCUPANCY_COLUMNS) if c[1] == "co2")
    windows += _implausible_co2(ts, values[co2], occupied, co2)
    return RealData(
        "occupancy",
        "UCI Occupancy Detection: office in Mons, Feb 2015, 1/min",
        OCCUPANCY_YAML,
        np.concatenate(series),
        np.concatenate(tss),
        np.concatenate(values),
        windows,
        np.concatenate(occ),
    )


# An empty office has no CO2 source: ventilation and leaks only bring it toward outdoor
# air. A rise of more than this in one minute after half an hour without anyone in the room
# is the sensor's, and its recovery takes some minutes.
_EMPTY_RISE_PPM = 100.0
_EMPTY_FOR = 30  # minutes (readings) unoccupied before
_GLITCH_BEFORE, _GLITCH_AFTER = 5 * MIN, 15 * MIN


def _implausible_co2(ts: I64, co2: F64, occupied: Bool, series: int) -> tuple[KnownWindow, ...]:
    """``implausible`` windows around CO2 rises an empty room cannot make."""
    busy = np.convolve(occupied.astype(np.int64), np.ones(_EMPTY_FOR + 1, np.int64))[: len(ts)]
    rise = np.zeros(len(ts))
    rise[1:] = np.where(np.diff(ts) <= 2 * MIN, np.diff(co2), 0.0)
    at = np.flatnonzero((busy == 0) & (rise > _EMPTY_RISE_PPM))
    note = f"CO2 up more than {_EMPTY_RISE_PPM:.0f} ppm in a minute in a room empty for 30 min"
    return tuple(
        KnownWindow(
            series, "implausible", int(ts[i]) - _GLITCH_BEFORE, int(ts[i]) + _GLITCH_AFTER, note
        )
        for i in at.tolist()
    )


def _gap_windows(ts: I64, n_series: int, longer_than_ns: int, note: str) -> tuple[KnownWindow, ...]:
    """A recording_gap window on every series for each silence in ``ts`` over the limit."""
    at = np.flatnonzero(np.diff(ts) > longer_than_ns)
    return tuple(
        KnownWindow(s, "recording_gap", int(ts[i]), int(ts[i + 1]), note)
        for s in range(n_series)
        for i in at.tolist()
    )


# --- munich-bridge-data (UniBw test bridge) ---------------------------------------------------

MUNICH_TZ: Final = "Europe/Berlin"  # the logger's clock; no zone is given in the files
MUNICH_DATE: Final = dt.date(2022, 4, 11)
# The recorded segments of 2022-04-11 in time order: (strain file stem, temperature file
# stem, what happened). The strain of the two three-hour "ref_ambient" recordings is not in
# the repository (files over its size limit), so those are gaps in the strain series.
MUNICH_SEGMENTS: Final[tuple[tuple[str, str, WindowKind], ...]] = (
    ("ref_support_load_01", "ref_load_01", "load_test"),
    ("support_01_lowering_01", "support_01_lowering_01", "settlement"),
    ("support_01_lowering_02", "support_01_lowering_02", "settlement"),
    ("support_load_01", "support_load_01", "load_test"),
    ("support_02_lowering", "support_02_lowering", "settlement"),
    ("support_load_02", "support_load_02", "load_test"),
    ("support_03_lowering", "support_03_lowering", "settlement"),
    ("support_load_03", "support_load_03", "load_test"),
)
MUNICH_AMBIENT: Final[tuple[str, ...]] = ("support_01_ref_ambient", "support_02_ref_ambient")
MUNICH_100HZ_SEGMENT: Final[str] = "support_load_01"

MUNICH_1HZ_YAML: Final = """\
sites:
  unibw-testbridge:
    kind: bridge
    name: Test bridge of UniBw Munich (munich-bridge-data)
    city: Neubiberg
    devices:
      logger:
        description: strain gauge DMS_CN (1 s means of 100 Hz) and air temperature (1 Hz)
        interval: 1s
        channels:
          cn: [strain, temperature]
"""
MUNICH_100HZ_YAML: Final = """\
sites:
  unibw-testbridge:
    kind: bridge
    name: Test bridge of UniBw Munich (munich-bridge-data)
    city: Neubiberg
    devices:
      dms:
        description: strain gauge DMS_CN at 100 Hz
        interval: 10ms
        channels:
          cn: [strain]
      air:
        description: air temperature at 1 Hz
        interval: 1s
        measurements: [temperature]
"""

_DATE_IN_NAME = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def strain_file(segment: str, *, rate: Literal["100hz", "1hz"]) -> str:
    suffix = "DMS_CNAt100Hz.csv" if rate == "100hz" else "DMS_CN_1s.csv"
    return f"UniBw_2022-04-11_{segment}{suffix}"


def temperature_file(segment: str) -> str:
    return f"UniBw_2022-04-11_{segment}.csv"


def read_munich_strain(path: Path) -> tuple[I64, F64]:
    """Parse a ``...DMS_CN...csv``: header ``Time (-),DMS_CN (um/m)``, rows
    ``YYYY-MM-DD hh:mm:ss.fff,value`` in microstrain, local time. The dates in the published
    files read 2022-11-04 for a test on 2022-04-11 (month and day swapped; the file names
    and the temperature files say 11 April), so the date is taken from the file name when
    the two disagree; the time of day is kept."""
    with _open_text(path, "cp1252") as f:
        header = f.readline().strip()
        if not header.startswith("Time (-),DMS_CN (um"):
            raise ValueError(f"{path}: not a DMS_CN strain file (header {header!r})")
        data = np.genfromtxt(f, delimiter=",", dtype=None, encoding=None, names=("t", "v"))
    stamps = np.atleast_1d(data["t"]).astype("datetime64[ms]")
    values = np.atleast_1d(data["v"]).astype(np.float64)
    m = _DATE_IN_NAME.search(path.name)
    if m is not None and len(stamps):
        day = np.datetime64(f"{m.group(1)}-{m.group(2)}-{m.group(3)}", "D")
        have = stamps.astype("datetime64[D]")
        stamps = np.where(have != day, day + (stamps - have), stamps)
    scale, offset = conversion("ppm", "ue")  # um/m is 1e-6 of a ratio: microstrain
    return local_to_utc_ns(stamps, MUNICH_TZ), values * scale + offset


def read_munich_temperature(path: Path) -> tuple[I64, F64]:
    """Parse a temperature file: cp1252, header ``Time (-),Air Temperature (°C),``, rows
    ``dd.mm.yyyy hh:mm:ss.fff,value``, local time."""
    with _open_text(path, "cp1252") as f:
        header = f.readline().strip()
        if not header.startswith("Time (-),Air Temperature"):
            raise ValueError(f"{path}: not a temperature file (header {header!r})")
        rows = [line.strip().split(",") for line in f if line.strip()]
    iso = [f"{d[6:10]}-{d[3:5]}-{d[0:2]}T{d[11:]}" for d, *_ in rows]
    stamps = np.array(iso, dtype="datetime64[ms]")
    values = np.array([float(r[1]) for r in rows], dtype=np.float64)
    return local_to_utc_ns(stamps, MUNICH_TZ), values


def _concat_sorted(parts: Iterable[tuple[I64, F64]]) -> tuple[I64, F64]:
    chunks = list(parts)
    if not chunks:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    ts = np.concatenate([c[0] for c in chunks])
    v = np.concatenate([c[1] for c in chunks])
    order = np.argsort(ts, kind="stable")
    ts, v = ts[order], v[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] > ts[:-1]
    return ts[keep], v[keep]


def load_munich(folder: Path | None = None, rate: Literal["1hz", "100hz"] = "1hz") -> RealData:
    """``1hz``: every segment's strain as 1-second means, paired with the air temperature
    (series 0 strain, 1 temperature). ``100hz``: the segment ``MUNICH_100HZ_SEGMENT`` at the
    full rate (series 0 strain), the temperature of that day beside it (series 1)."""
    name = f"munich_{rate}"
    folder = folder or data_dir(name)
    if folder is None:
        raise FileNotFoundError(f"{name} data not found (see bench/data/{name}/SOURCE.md)")
    segments = (
        MUNICH_SEGMENTS
        if rate == "1hz"
        else tuple(s for s in MUNICH_SEGMENTS if s[0] == MUNICH_100HZ_SEGMENT)
    )
    strain_parts: list[tuple[I64, F64]] = []
    windows: list[KnownWindow] = []
    for seg, _temp, kind in segments:
        path = _find(folder / "strain", strain_file(seg, rate=rate))
        if path is None:
            continue
        ts, v = read_munich_strain(path)
        strain_parts.append((ts, v))
        if kind != "load_test" and len(ts):
            windows.append(KnownWindow(0, "settlement", int(ts[0]), int(ts[-1]), seg))
        elif len(ts):
            windows.append(KnownWindow(0, "load_test", int(ts[0]), int(ts[-1]), seg))
    if not strain_parts:
        raise FileNotFoundError(f"{folder}/strain: no strain file of the expected names")
    temp_names = [t for _, t, _ in segments] + list(MUNICH_AMBIENT if rate == "1hz" else ())
    temp_parts = [
        read_munich_temperature(p)
        for t in temp_names
        if (p := _find(folder / "temperature", temperature_file(t)))
    ]
    s_ts, s_v = _concat_sorted(strain_parts)
    t_ts, t_v = _concat_sorted(temp_parts)
    # Silences of the strain longer than a minute: between published segments.
    windows += [
        KnownWindow(k, "recording_gap", int(ts[i]), int(ts[i + 1]), "between published files")
        for k, ts in ((0, s_ts), (1, t_ts))
        for i in np.flatnonzero(np.diff(ts) > MIN).tolist()
    ]
    return RealData(
        name,
        f"UniBw Munich test bridge, 2022-04-11: strain {'1 s means' if rate == '1hz' else '100 Hz'}"
        " and air temperature",
        MUNICH_1HZ_YAML if rate == "1hz" else MUNICH_100HZ_YAML,
        np.concatenate([np.zeros(len(s_ts), np.int32), np.ones(len(t_ts), np.int32)]),
        np.concatenate([s_ts, t_ts]),
        np.concatenate([s_v, t_v]),
        tuple(sorted(windows, key=lambda w: (w.series, w.start_ns))),
        np.zeros(len(s_ts) + len(t_ts), dtype=bool),
    )


def load_munich_1hz(folder: Path | None = None) -> RealData:
    return load_munich(folder, "1hz")


def load_munich_100hz(folder: Path | None = None) -> RealData:
    return load_munich(folder, "100hz")


LOADERS: Final[dict[str, Callable[[], RealData]]] = {
    "occupancy": load_occupancy,
    "munich_1hz": load_munich_1hz,
    "munich_100hz": load_munich_100hz,
}


def available() -> list[str]:
    """The data sets whose files are found."""
    return [n for n in LOADERS if data_dir(n) is not None]


# --- building the excerpts from the original files --------------------------------------------


def _write_gz(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same input gives the same bytes.
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode(encoding))


def _block_means(lines: Sequence[str], block: int) -> list[str]:
    """Rows of a 100 Hz strain file as ``block``-sample means, stamped with each block's
    first time, in the file's own layout."""
    out = []
    for i in range(0, len(lines) - block + 1, block):
        chunk = lines[i : i + block]
        mean = sum(float(x.split(",")[1]) for x in chunk) / block
        out.append(f"{chunk[0].split(',')[0]},{mean:.4f}")
    return out


def make_excerpts(occupancy_src: Path, munich_src: Path, dest: Path = DATA_DIR) -> list[Path]:
    """Write the excerpts from the original files: ``occupancy_src`` holds the three UCI
    text files; ``munich_src`` holds ``strain/`` (the unzipped ``...DMS_CNAt100Hz.csv``
    files) and ``temperature/`` (the files of ``TemperatureData2022-04-11.zip``)."""
    written = []
    for n in OCCUPANCY_FILES:
        out = dest / "occupancy" / f"{n}.gz"
        _write_gz(out, (occupancy_src / n).read_text("utf-8"))
        written.append(out)
    for seg, _temp, _kind in MUNICH_SEGMENTS:
        src = munich_src / "strain" / strain_file(seg, rate="100hz")
        header, *lines = [x for x in src.read_text("cp1252").splitlines() if x.strip()]
        out = dest / "munich_1hz" / "strain" / f"{strain_file(seg, rate='1hz')}.gz"
        _write_gz(out, "\n".join([header, *_block_means(lines, 100)]) + "\n")
        written.append(out)
        if seg == MUNICH_100HZ_SEGMENT:
            # Full rate, rounded to 0.01 microstrain (the noise is about 0.2).
            rounded = [f"{x.split(',')[0]},{float(x.split(',')[1]):.2f}" for x in lines]
            out = dest / "munich_100hz" / "strain" / f"{strain_file(seg, rate='100hz')}.gz"
            _write_gz(out, "\n".join([header, *rounded]) + "\n")
            written.append(out)
    for temp in [t for _, t, _ in MUNICH_SEGMENTS] + list(MUNICH_AMBIENT):
        text = (munich_src / "temperature" / temperature_file(temp)).read_text("cp1252")
        for name in ("munich_1hz", "munich_100hz"):
            if name == "munich_100hz" and temp != MUNICH_100HZ_SEGMENT:
                continue
            out = dest / name / "temperature" / f"{temperature_file(temp)}.gz"
            _write_gz(out, text, "cp1252")
            written.append(out)
    return written
