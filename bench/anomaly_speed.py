"""Speed of the anomaly check alone: vectorised ``Detectors`` against the per-sample reference.

    python -m bench.anomaly_speed [--reference-batches 5] [--repeat 3] [--seed 1]

Workload. A generated registry of 1,000 series: 25 bridges (two strain gateways with four
gauges of strain and temperature each, a pier logger with two inclinometers and two crack
gauges; every 10 s) and 20 schools of five classrooms (CO2, temperature, humidity and either
PM2.5/PM10 or noise/light; every minute). The simulator (``devices.simulator``) gives each
series 10,000 realistic samples (lorries, temperature cycles, lessons, window airing, sensor
noise and rounding) with a few injected faults (spikes, stuck values, steps), and a few
devices fall silent for a while (gaps); devices are not synchronised. The readings are fed
as the service would: in time order, in 100 batches of 100 samples per series (100,000
readings each), each batch in arrival (timestamp) order with every series interleaved.

Measurement. Only ``check`` is timed (``time.perf_counter`` around each call, garbage
collection off); building the batches is not. The vectorised figures are the fastest of
``--repeat`` runs from a fresh state; the reference's, of ``--reference-repeat`` runs (one
by default: a run takes minutes and varies little). The vectorised check runs over all of
it. The baseline is ``bench/anomaly_reference.py`` with ``stats="rolling"``: the same
detectors one reading at a time in plain Python, with the textbook rolling median and MAD
(of the values and of their changes) of the last segment-width readings recomputed before
every reading. It runs over all 1,000 series for the first ``--reference-batches`` batches,
fed the identical batches; its samples per second there are taken as its rate for the
whole run, since its work per reading does not grow as the run goes on (a fixed window).
The readings on which its flags and the vectorised check's differ are counted: how far the
statistics of the previous segment are from a rolling window's. The same reference with
``stats="segment"`` (the statistics of the previous segment, as the vectorised check takes
them: the exact oracle, whose flags must be identical) runs over all 100 batches, faults
included (it is fast enough), and the readings whose flags differ from the vectorised
check's are counted (0 expected).

Backlog. A second registry, the same 1,000 series all every minute, and a week of their
simulated readings (10,080 per series, 10.08 M readings) checked in ONE batch from a fresh
state, as a restarted service takes a device's backlog: samples per second (the fastest of
``--repeat``). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from bench.anomaly_reference import ReferenceDetectors
from devices.registry import Registry, parse_registry
from devices.simulator import FaultKind, FaultSpec, Simulator
from devices.topics import TopicScheme
from ingest.anomaly import AnomalyCheck, Detectors
from ingest.batch import ReadingBatch

SERIES = 1000
SAMPLES = 10_000
PER_BATCH = 100  # samples per series per batch
BRIDGES = 25
SCHOOLS = 20
BRIDGE_S = 10
SCHOOL_S = 60
BACKLOG_S = 60  # the backlog: every series every minute ...
BACKLOG_SAMPLES = 7 * 24 * 60  # ... for a week
START_NS = 1_780_000_000 * 10**9  # late May 2026


def registry_yaml(bridge_s: int = BRIDGE_S, school_s: int = SCHOOL_S) -> str:
    lines = ["sites:"]
    gauges = ", ".join(f"g{g}: [strain, temperature]" for g in range(1, 5))
    for b in range(BRIDGES):
        lines += [f"  bridge-{b:02d}:", "    kind: bridge", f"    name: Bridge {b}", "    devices:"]
        for gw in (1, 2):
            lines += [
                f"      gw{gw}:",
                f"        interval: {bridge_s}s",
                f"        channels: {{{gauges}}}",
                "        overrides: {strain: {limit: 900}}",
            ]
        lines += [
            "      pier:",
            f"        interval: {bridge_s}s",
            "        channels: {p1: [inclination], p2: [inclination], "
            "c1: [crack_width], c2: [crack_width]}",
        ]
    for sc in range(SCHOOLS):
        lines += [
            f"  school-{sc:02d}:",
            "    kind: school",
            f"    name: School {sc}",
            "    devices:",
        ]
        for r in range(5):
            extra = "pm2_5, pm10" if r % 2 else "noise, light"
            lines += [
                f"      r{r + 1}0{sc % 10}:",
                f"        interval: {school_s}s",
                f"        measurements: [co2, temperature, humidity, {extra}]",
            ]
    return "\n".join(lines) + "\n"


Columns = tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.float64]]
FAULTS: tuple[tuple[FaultKind, float, float], ...] = (
    ("spike", 0.05, 6.0),  # kind, share of the series, hours
    ("stuck", 0.03, 2.0),
    ("step", 0.03, 1e4),  # to the end
)


@dataclass
class Workload:
    registry: Registry
    batches: list[Columns]  # series, ts_ns, values of each batch, in arrival order
    faults: int
    silent_devices: int


def workload(
    seed: int,
    samples: int = SAMPLES,
    per_batch: int = PER_BATCH,
    bridge_s: int = BRIDGE_S,
    school_s: int = SCHOOL_S,
) -> Workload:
    """``samples`` readings of every series, simulated, in batches of ``per_batch`` readings
    per series, each batch in arrival (time) order."""
    registry = parse_registry(registry_yaml(bridge_s, school_s), "bench-registry.yaml")
    n = len(registry.series)
    if n != SERIES:
        raise RuntimeError(f"the generated registry has {n} series, not {SERIES}")
    rng = np.random.default_rng(seed)
    faults = []
    for kind, share, hours in FAULTS:
        for i in rng.choice(n, round(share * n), replace=False).tolist():
            s = registry.series[i]
            span = samples * round(s.interval.total_seconds() * 1e9)
            faults.append(
                FaultSpec(
                    kind,
                    i,
                    START_NS + int(rng.uniform(0.2, 0.8) * span),
                    int(min(hours * 3600e9, span)),
                    float(rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 3.0)),
                )
            )
    sim = Simulator(
        registry,
        TopicScheme(),
        seed=seed,
        start_ns=START_NS,
        bridge_rate_hz=1.0 / bridge_s,
        school_interval_s=school_s,
        faults=faults,
    )
    ts = np.empty((n, samples), np.int64)
    values = np.empty((n, samples))
    silent = 0
    for dev in registry.devices():
        period = round(dev.interval.total_seconds() * 1e9)
        t = START_NS + int(rng.integers(0, period)) + np.arange(samples, dtype=np.int64) * period
        if rng.random() < 0.05:  # the device falls silent for a while: a gap
            t[int(rng.integers(samples // 10, samples)) :] += int(rng.integers(5, 200)) * period
            silent += 1
        for name, (v, _) in sim.device_values(dev, t).items():
            k = dev.series[name].index
            ts[k], values[k] = t, v
    if not np.isfinite(values).all():
        raise RuntimeError("the simulator produced a non-finite value")
    batches: list[Columns] = []
    for a in range(0, samples, per_batch):
        t = ts[:, a : a + per_batch].ravel()
        sid = np.repeat(np.arange(n, dtype=np.int32), t.size // n)
        arrival = np.argsort(t, kind="stable")
        batches.append((sid[arrival], t[arrival], values[:, a : a + per_batch].ravel()[arrival]))
    return Workload(registry, batches, len(faults), silent)


Flags = list[npt.NDArray[np.int32]]


def run(check: AnomalyCheck, batches: list[Columns]) -> tuple[float, Flags]:
    """Seconds spent in ``check`` over ``batches``, and the flags of each batch."""
    seconds = 0.0
    flags = []
    gc.collect()
    gc.disable()
    try:
        for sid, t, v in batches:
            b = ReadingBatch.unchecked(sid, t, v)
            started = time.perf_counter()
            check.check(b)
            seconds += time.perf_counter() - started
            flags.append(b.flags)
    finally:
        gc.enable()
    return seconds, flags


def best(
    make: Callable[[], AnomalyCheck], batches: list[Columns], repeat: int
) -> tuple[float, Flags]:
    """The fastest of ``repeat`` runs over ``batches``, each from a fresh state."""
    runs = [run(make(), batches) for _ in range(repeat)]
    return min(r[0] for r in runs), runs[0][1]


def differ(a: Flags, b: Flags) -> int:
    return sum(int((x != y).sum()) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference-batches",
        type=int,
        default=5,
        help="batches the reference is timed on (default 5 of 100)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument(
        "--reference-repeat", type=int, default=1, help="runs of the reference (default 1)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-backlog", action="store_true", help="skip the week's backlog")
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    ref_repeat = max(1, args.reference_repeat)

    started = time.perf_counter()
    w = workload(args.seed)
    series = w.registry.series
    n_batches = len(w.batches)
    k = max(1, min(args.reference_batches, n_batches))
    kinds = sorted({s.key.measurement for s in series})
    bridge = sum(s.kind == "bridge" for s in series)
    per_batch = len(w.batches[0][0])
    print(
        f"workload: {SERIES:,} series ({bridge} bridge every {BRIDGE_S} s, "
        f"{SERIES - bridge} classroom every {SCHOOL_S} s; {', '.join(kinds)}) x {SAMPLES:,} "
        f"samples, {w.faults} injected faults, {w.silent_devices} devices with a gap; "
        f"{n_batches} batches of {per_batch:,} readings ({PER_BATCH} per series, in arrival "
        f"order), generated in {time.perf_counter() - started:.1f} s. Times: check() alone, "
        f"fastest of {repeat} runs from a fresh state (reference: of {ref_repeat}), garbage "
        "collection off.",
        flush=True,
    )

    total = SERIES * SAMPLES
    vec_s, vec_flags = best(lambda: Detectors(series), w.batches, repeat)
    vec_rate = total / vec_s
    print(
        f"vectorised (ingest.anomaly.Detectors): {total:,} samples in {vec_s:.2f} s "
        f"-> {vec_rate:,.0f} samples/s",
        flush=True,
    )

    done = k * per_batch
    head_s, _ = best(lambda: Detectors(series), w.batches[:k], repeat)
    head_rate = done / head_s
    print(
        f"  on batches 1-{k} (the reference's share): {done:,} samples in {head_s:.2f} s "
        f"-> {head_rate:,.0f} samples/s",
        flush=True,
    )
    references: dict[str, tuple[float, int, int]] = {}
    stats: Literal["rolling", "segment"]
    for stats, what in (
        ("rolling", "median and MAD of the last segment-width readings before every reading"),
        ("segment", "the statistics of the previous segment, as the vectorised check"),
    ):

        def make(stats: Literal["rolling", "segment"] = stats) -> AnomalyCheck:
            return ReferenceDetectors(series, stats=stats)

        # The exact oracle is fast enough to run over everything, faults included.
        m = n_batches if stats == "segment" else k
        m_done, m_rate = m * per_batch, (vec_rate if m == n_batches else head_rate)
        ref_s, ref_flags = best(make, w.batches[:m], ref_repeat)
        ref_rate = m_done / ref_s
        wrong = differ(vec_flags[:m], ref_flags)
        flagged = sum(int((a != 0).sum()) for a in ref_flags)
        references[stats] = (ref_rate, wrong, flagged)
        print(
            f"reference, stats={stats!r} ({what}): all {SERIES:,} series, batches 1-{m} of "
            f"{n_batches} = {m_done:,} samples in {ref_s:.2f} s -> {ref_rate:,.0f} samples/s; "
            f"vectorised {m_rate / ref_rate:.1f}x on the same batches. Flags differ from "
            f"the vectorised check's on {wrong:,} readings ({wrong / m_done:.4%}; the "
            f"reference flagged {flagged:,}).",
            flush=True,
        )
    if k < n_batches:
        print(
            f"  extrapolated: the rolling reference's samples/s on the first {k} batches stand "
            "for the whole run, since its work per reading does not grow as the run goes on.",
            flush=True,
        )
    base_rate, base_differ, _ = references["rolling"]
    seg_rate, seg_differ, _ = references["segment"]
    speedup = vec_rate / base_rate
    verdict = "met" if speedup >= 50 else "NOT met"
    exact = "identical" if seg_differ == 0 else f"DIFFERENT on {seg_differ:,} readings"
    print(
        f"speedup over the per-sample rolling baseline: {speedup:.1f}x (target: 50x or more: "
        f"{verdict}); over the exact per-sample oracle (stats='segment'): "
        f"{vec_rate / seg_rate:.1f}x, flags {exact}",
        flush=True,
    )

    backlog: dict[str, float | int] = {}
    if not args.no_backlog:
        started = time.perf_counter()
        week = workload(args.seed, BACKLOG_SAMPLES, BACKLOG_SAMPLES, BACKLOG_S, BACKLOG_S)
        readings = len(week.batches[0][0])
        made = time.perf_counter() - started
        week_s, _ = best(lambda: Detectors(week.registry.series), week.batches, repeat)
        week_rate = readings / week_s
        verdict = "met" if week_rate >= 2e6 else "NOT met"
        print(
            f"backlog: a week of 1-minute data of {SERIES:,} series ({readings:,} readings, "
            f"generated in {made:.1f} s) in ONE batch from a fresh state: {week_s:.2f} s -> "
            f"{week_rate:,.0f} samples/s (target: 2 M/s or more: {verdict})",
            flush=True,
        )
        backlog = {
            "backlog_readings": readings,
            "backlog_seconds": round(week_s, 3),
            "backlog_samples_per_s": round(week_rate),
        }
    print(
        json.dumps(
            {
                "vectorised_samples_per_s": round(vec_rate),
                "reference_samples_per_s": round(base_rate),
                "speedup": round(speedup, 2),
                "flags_differ_share": round(base_differ / done, 6),
                "segment_reference_samples_per_s": round(seg_rate),
                "segment_reference_speedup": round(vec_rate / seg_rate, 2),
                "segment_reference_flags_differ": seg_differ,
                **backlog,
                "series": SERIES,
                "samples_per_series": SAMPLES,
            }
        )
    )


if __name__ == "__main__":
    main()
