"""Tables and the JSON line of the anomaly evaluation (``bench/eval_anomaly.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from bench.eval_anomaly import (
    FALSE_ALARM_TARGET,
    JACCARD_TARGET,
    RECALL_TARGETS,
    REFERENCE_PATTERN,
    Report,
    SetReport,
)
from bench.eval_highrate import HIGH_RATE_KINDS, HighRateResult
from bench.eval_patterns import Pattern
from bench.eval_scoring import DETECTORS, EXPECTED, HOUR, MIN, NS, Agreement, f1
from bench.eval_week import BRIDGE_INTERVAL_S, SCHOOL_INTERVAL_S, TARGET_KINDS
from devices.simulator import FaultKind

_SET_TITLES = {"tuning": "Tuning seeds", "held_out": "Held-out seeds"}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _fmt_delay(ns: int | None) -> str:
    if ns is None:
        return "-"
    s = ns / NS
    if abs(s) < 120:
        return f"{s:.0f} s"
    if abs(s) < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _pattern_note(report: Report, pattern: Pattern) -> str:
    cfg = report.config
    if pattern == "live":
        tick = cfg.week.arrivals.live_tick_ns
        return f"{tick / NS:g} s ticks" if tick else "one message per batch"
    if pattern == "blocks":
        return f"{cfg.week.arrivals.block_samples}-sample blocks of fast devices, else live"
    if pattern == "minutes":
        lo, hi = cfg.week.arrivals.minutes_ns
        return f"{lo / MIN:g}-{hi / MIN:g} min windows"
    if pattern == "hour":
        return "one clock hour"
    return "the whole run"


def _row(
    label: str, cells: Sequence[str], width: int = 9, tail: str = "", label_width: int = 26
) -> str:
    return f"{label:<{label_width}}" + "".join(f"{c:>{width}}" for c in cells) + tail


def _fmt_count(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:.1f}"


def _agreement_table(
    pairs: dict[tuple[Pattern, Pattern], Agreement], patterns: list[Pattern]
) -> list[str]:
    lines = [_row("", patterns[1:])]
    for i, a in enumerate(patterns[:-1]):
        cells = []
        for b in patterns[1:]:
            j = patterns.index(b)
            agreement = pairs.get((a, b)) if j > i else None
            cells.append(f"{agreement.jaccard:.4f}" if agreement is not None else "")
        lines.append(_row(f"  {a}", cells))
    return lines


def format_set(report: Report, s: SetReport) -> list[str]:
    cfg = report.config
    patterns = list(s.scores)
    reg = report.registry
    bridges = sum(1 for x in reg.series if x.kind == "bridge")
    lines = [
        f"== {_SET_TITLES.get(s.name, s.name)} {', '.join(map(str, s.seeds))}: {s.days}-day "
        f"runs from Mondays {', '.join(w.isoformat() for w in s.weeks)}",
        f"{s.n_series} series ({bridges} bridge every {BRIDGE_INTERVAL_S} s, "
        f"{s.n_series - bridges} classroom every {SCHOOL_INTERVAL_S} s), a clean and a faulty "
        "run per seed; patterns: "
        + "; ".join(f"{p} ({_pattern_note(report, p)})" for p in patterns),
        "",
        f"Recall per fault kind (faulty runs; step/drift flagged within "
        f"{cfg.week.grace_ns / HOUR:.0f} h of onset)",
        _row(f"{'fault':<13}{'detector':<8}{'n':>5}", patterns, tail=f"{'target':>8}"),
    ]
    for kind in (*TARGET_KINDS, "gap"):
        first = s.scores[patterns[0]].recall[kind]
        target = RECALL_TARGETS.get(kind)
        lines.append(
            _row(
                f"{kind:<13}{first.detector:<8}{first.windows:>5}",
                [_fmt(s.scores[p].recall[kind].recall) for p in patterns],
                tail=f"{_fmt(target) if target else '-':>8}",
            )
        )
    lines.append(
        _row(
            "recall, any flag (mean)",
            [
                _fmt(_mean([s.scores[p].recall[k].recall_any for k in TARGET_KINDS]))
                for p in patterns
            ],
        )
    )
    lines.append(
        _row(
            "median delay, step",
            [_fmt_delay(s.scores[p].recall["step"].median_delay_ns) for p in patterns],
        )
    )
    lines += [
        "",
        _row(
            "false alarms/sensor-week",
            [f"{s.false_alarms(p):.2f}" for p in patterns],
            tail=f"{FALSE_ALARM_TARGET:>8g}",
        ),
        _row(
            "flagged readings/s-week",
            [_fmt_count(s.flagged_per_sensor_week(p)) for p in patterns],
        ),
        _row("limit events/sensor-week", [f"{s.limit_events(p):.2f}" for p in patterns]),
        _row(
            "batches per run", [f"{s.scores[p].batches // (2 * len(s.seeds)):,}" for p in patterns]
        ),
        _row("check seconds (all runs)", [f"{s.scores[p].seconds:.1f}" for p in patterns]),
        "",
        "Flag agreement between patterns (Jaccard of (series, ts, flag) sets, RANGE left out, "
        f"pooled over runs; target >= {JACCARD_TARGET:g})",
        *_agreement_table(s.agreement, patterns),
    ]
    if REFERENCE_PATTERN in s.scores:
        lines += ["", *_detector_table(s, REFERENCE_PATTERN), *_clean_table(report, s)]
    if s.high_rate is not None and s.high_rate.records:
        lines += ["", *format_high_rate(report, s.high_rate)]
    return lines


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _detector_table(s: SetReport, pattern: Pattern) -> list[str]:
    scores = s.scores[pattern]
    lines = [
        f"Per detector, pattern {pattern} (events: flagged runs merged within 1 h; clean = "
        "per sensor-week on clean data)",
        f"{'detector':<10}{'faulty':>8}{'true':>6}{'precision':>11}{'recall':>8}{'F1':>6}"
        f"{'clean':>7}{'clean/sw':>10}",
    ]
    kind_of: dict[str, FaultKind] = {}
    for fault, names in EXPECTED.items():
        for name in names:
            kind_of.setdefault(name, fault)
    for name, d in scores.precision.items():
        kind = kind_of.get(name)
        recall = scores.recall[kind].recall if kind is not None else None
        clean = int(scores.clean_counts[name].sum())
        lines.append(
            f"{name:<10}{d.events:>8}{d.true_events if kind else '-':>6}"
            f"{_fmt(d.precision) if kind else '-':>11}{_fmt(recall):>8}"
            f"{_fmt(f1(d.precision, recall)) if kind else '-':>6}"
            f"{clean:>7}{clean / s.sensor_weeks:>10.2f}"
        )
    return lines


def _clean_table(report: Report, s: SetReport) -> list[str]:
    """Clean-data alarms per sensor-week by measurement and detector, with the worst sensor:
    shows which detector trips on which events (lorries on strain, airing in classrooms)."""
    counts = s.scores[REFERENCE_PATTERN].clean_counts  # per series, summed over runs
    weeks = len(s.seeds) * s.days / 7
    noisy = [d for d in DETECTORS if d != "limit" and counts[d].any()]
    groups: dict[str, list[int]] = {}
    for x in report.registry.series:
        groups.setdefault(f"{x.kind}/{x.key.measurement}", []).append(x.index)
    lines = [
        f"Clean data by measurement, pattern {REFERENCE_PATTERN} (alarms per sensor-week)",
        f"  {'measurement':<20}{'series':>7}{'all':>7}{'worst':>7}"
        + "".join(f"{d:>8}" for d in noisy),
    ]
    for name, idx in sorted(groups.items()):
        per = counts["any"][idx] / weeks
        row = f"  {name:<20}{len(idx):>7}{per.mean():>7.2f}{per.max():>7.1f}"
        lines.append(row + "".join(f"{counts[d][idx].mean() / weeks:>8.2f}" for d in noisy))
    return lines


def format_high_rate(report: Report, hr: HighRateResult) -> list[str]:
    cfg = report.config.high_rate
    assert cfg is not None
    patterns = list(hr.scores)
    first = hr.scores[patterns[0]]
    lines = [
        f"High-rate records: {hr.records} of {cfg.record_ns / HOUR:g} h at 100 Hz (3 gauges, "
        f"strain + temperature), clean, settlement, step + drift; live in "
        f"{cfg.arrivals.live_tick_ns / NS:g} s ticks",
        f"Recall (settlement and step: within {cfg.deadline_ns / NS:g} s; drift: by the end)",
        _row(f"{'fault':<12}{'detector':<11}{'n':>3}", patterns),
    ]
    lines += [
        _row(
            f"{kind:<12}{first.recall[kind].detector:<11}{first.recall[kind].windows:>3}",
            [_fmt(hr.scores[p].recall[kind].recall) for p in patterns],
        )
        for kind in HIGH_RATE_KINDS
    ]
    lines += [
        _row(
            f"  {kind}, by the end", [_fmt(hr.scores[p].recall_end[kind].recall) for p in patterns]
        )
        for kind in ("settlement", "step")
    ]
    lines += [
        _row(
            f"  {kind}, median delay",
            [_fmt_delay(hr.scores[p].recall_end[kind].median_delay_ns) for p in patterns],
        )
        for kind in HIGH_RATE_KINDS
    ]
    lines += [
        "  (delays from the onset; for a settlement from its completion)",
        _row(
            "false alarms/record-hour",
            [_fmt(hr.scores[p].false_alarms_per_hour) for p in patterns],
        ),
        _row(
            "flagged readings/rec-hour",
            [
                _fmt_count(hr.scores[p].clean_flagged / hr.scores[p].clean_hours)
                if hr.scores[p].clean_hours
                else "-"
                for p in patterns
            ],
        ),
        _row(
            "  by detector (clean)",
            [
                ",".join(
                    f"{d}:{n}" for d, n in hr.scores[p].clean_events.items() if n and d != "any"
                )
                or "-"
                for p in patterns
            ],
        ),
        _row("batches per record", [f"{hr.scores[p].batches // hr.records:,}" for p in patterns]),
        _row("check seconds (all)", [f"{hr.scores[p].seconds:.1f}" for p in patterns]),
        "Flag agreement between patterns (Jaccard, pooled over records)",
        *_agreement_table(hr.agreement, patterns),
    ]
    return lines


def format_targets(s: SetReport) -> list[str]:
    patterns = list(s.scores)
    first = s.targets(patterns[0])
    lines = [
        f"Targets (issue 12) on the {_SET_TITLES.get(s.name, s.name).lower()}",
        _row("", patterns, label_width=34),
    ]
    lines += [
        _row(name, ["yes" if s.targets(p)[name] else "NO" for p in patterns], label_width=34)
        for name in first
    ]
    lines.append(f"All targets met: {'yes' if s.targets_met() else 'no'}")
    return lines


def format_report(report: Report) -> str:
    lines: list[str] = []
    for s in report.sets.values():
        lines += [*format_set(report, s), ""]
    judged = report.sets.get("held_out") or next(iter(report.sets.values()), None)
    if judged is not None:
        lines += format_targets(judged)
    lines.append(f"Evaluation took {report.seconds:.0f} s ({report.config.workers} processes)")
    return "\n".join(lines)


def _rnd(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


def set_json(s: SetReport) -> dict[str, object]:
    kinds = (*TARGET_KINDS, "gap")
    out: dict[str, object] = {
        "seeds": list(s.seeds),
        "weeks": [w.isoformat() for w in s.weeks],
        "series": s.n_series,
        "patterns": {
            p: {
                "recall": {k: _rnd(sc.recall[k].recall) for k in kinds},
                "recall_any": {k: _rnd(sc.recall[k].recall_any) for k in kinds},
                "precision": {k: _rnd(sc.precision[EXPECTED[k][0]].precision) for k in kinds},
                "false_alarms_per_sensor_week": _rnd(s.false_alarms(p)),
                "flagged_per_sensor_week": _rnd(s.flagged_per_sensor_week(p), 2),
                "limit_events_per_sensor_week": _rnd(s.limit_events(p)),
                "readings": sc.readings,
                "batches": sc.batches,
                "check_seconds": round(sc.seconds, 2),
                "targets_met": all(s.targets(p).values()),
            }
            for p, sc in s.scores.items()
        },
        "jaccard": {f"{a}~{b}": _rnd(ag.jaccard, 5) for (a, b), ag in s.agreement.items()},
        "targets_met": s.targets_met(),
    }
    if s.high_rate is not None and s.high_rate.records:
        hr = s.high_rate
        out["high_rate"] = {
            "records": hr.records,
            "patterns": {
                p: {
                    "recall": {k: _rnd(sc.recall[k].recall) for k in HIGH_RATE_KINDS},
                    "recall_by_end": {k: _rnd(sc.recall_end[k].recall) for k in HIGH_RATE_KINDS},
                    "median_delay_s": {
                        k: _rnd(
                            d / NS if (d := sc.recall_end[k].median_delay_ns) is not None else None,
                            1,
                        )
                        for k in HIGH_RATE_KINDS
                    },
                    "false_alarms_per_record_hour": _rnd(sc.false_alarms_per_hour),
                    "check_seconds": round(sc.seconds, 2),
                }
                for p, sc in hr.scores.items()
            },
            "jaccard": {f"{a}~{b}": _rnd(ag.jaccard, 5) for (a, b), ag in hr.agreement.items()},
        }
    return out


def report_json(report: Report) -> dict[str, object]:
    judged = report.sets.get("held_out")
    return {
        **{name: set_json(s) for name, s in report.sets.items()},
        "targets_met": judged.targets_met() if judged is not None else None,
        "seconds": round(report.seconds, 1),
    }
