"""The generated Grafana dashboards and provisioning files, checked against Grafana's
dashboard JSON model and against the registry they come from.

No Grafana (and no InfluxDB with Flux) runs here: the tests read the JSON model and the
Flux text of each query, and where it matters what a query gives (the envelope, the
flagged counts), they apply the query's window function to readings in Python."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from dashboards.grafana import FOLDERS, GRAFANA_UID, GeneratedDashboard, build_dashboards, render
from dashboards.provisioning import DatasourceTarget, provisioning_files, write_build
from devices.registry import Registry, load_registry, parse_registry
from devices.vocabulary import SiteKind
from stadtpuls.cli import main
from tests.support.config import ConfigWriter
from tests.support.registry import REGISTRY_YAML

EXAMPLE = Path(__file__).resolve().parents[2] / "stadtpuls" / "examples" / "registry.yaml"
BUCKET = "city-bucket"
TARGET = DatasourceTarget("http://influxdb:8086", "city-org", BUCKET)


@pytest.fixture(params=["example", "fixture"], scope="module")
def registry(request: pytest.FixtureRequest) -> Registry:
    if request.param == "example":
        return load_registry(EXAMPLE)
    return parse_registry(REGISTRY_YAML, "test-registry.yaml")


@pytest.fixture(scope="module")
def generated(registry: Registry) -> list[GeneratedDashboard]:
    return build_dashboards(registry, BUCKET)


def provisioned_uids() -> set[str]:
    text = provisioning_files(TARGET)["provisioning/datasources/stadtpuls.yaml"]
    return {ds["uid"] for ds in yaml.safe_load(text)["datasources"]}


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict):
            yield ds
        for value in node.values():
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


def data_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in model["panels"] if p.get("targets")]


def test_same_registry_gives_identical_bytes(registry: Registry, tmp_path: Path) -> None:
    first = write_build(registry, TARGET, tmp_path / "a")
    second = write_build(load_again(registry), TARGET, tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [
        p.relative_to(tmp_path / "b") for p in second
    ]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a


def load_again(registry: Registry) -> Registry:
    """An equal registry object built anew, so no state can carry over between builds."""
    if "b1-wittekindstrasse" in registry.sites:
        return load_registry(EXAMPLE)
    return parse_registry(REGISTRY_YAML, "test-registry.yaml")


def test_one_dashboard_per_site_plus_overview_and_pipeline(
    registry: Registry, generated: list[GeneratedDashboard]
) -> None:
    uids = [d.uid for d in generated]
    assert len(set(uids)) == len(uids) == len(registry.sites) + 2
    assert all(len(uid) <= 40 and re.fullmatch(r"[a-z0-9_-]+", uid) for uid in uids)
    by_folder = {d.folder.uid for d in generated}
    assert by_folder == {f.uid for f in FOLDERS.values()}
    for d in generated:
        tags = d.model["tags"]
        site = next((s for s in registry.sites.values() if s.id in tags), None)
        if site is not None:
            assert d.folder is FOLDERS[site.kind.value]


def test_valid_dashboard_model(generated: list[GeneratedDashboard]) -> None:
    for d in generated:
        model = d.model
        assert isinstance(model["schemaVersion"], int)
        assert model["schemaVersion"] >= 36
        assert model["title"]
        assert model["panels"]
        ids = [p["id"] for p in model["panels"]]
        assert len(set(ids)) == len(ids), d.uid
        boxes = []
        for p in model["panels"]:
            pos = p["gridPos"]
            assert {"x", "y", "w", "h"} <= pos.keys(), (d.uid, p["title"])
            assert pos["x"] >= 0
            assert pos["w"] > 0
            assert pos["h"] > 0
            assert pos["x"] + pos["w"] <= 24, (d.uid, p["title"])
            boxes.append((pos["x"], pos["y"], pos["x"] + pos["w"], pos["y"] + pos["h"], p["title"]))
        for a, b in combinations(boxes, 2):
            overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
            assert not overlap, f"{d.uid}: panels {a[4]!r} and {b[4]!r} overlap"


def test_datasources_resolve_to_provisioned_ones(generated: list[GeneratedDashboard]) -> None:
    known = provisioned_uids() | {GRAFANA_UID}
    for d in generated:
        refs = list(datasource_refs(d.model))
        assert refs, d.uid
        for ref in refs:
            assert ref["uid"] in known, (d.uid, ref)
        # Every panel that queries names its datasource, and so does each of its queries.
        for p in data_panels(d.model):
            assert p["datasource"]["uid"] in provisioned_uids()
            assert all(t["datasource"]["uid"] == p["datasource"]["uid"] for t in p["targets"])


def test_units_on_every_data_panel(generated: list[GeneratedDashboard]) -> None:
    for d in generated:
        for p in data_panels(d.model):
            assert p["fieldConfig"]["defaults"].get("unit"), (d.uid, p["title"])


def test_flux_names_the_bucket_and_filters_by_site(
    registry: Registry, generated: list[GeneratedDashboard]
) -> None:
    site_filter = re.compile(r'r\.site (?:== "([^"]+)"|=~ /\^\$\{site:regex\}\$/)')
    for d in generated:
        variables = {v["name"] for v in d.model["templating"]["list"]}
        for p in data_panels(d.model):
            for t in p["targets"]:
                if "query" not in t:
                    continue  # PromQL: the service's own metrics, not a site's
                query = t["query"]
                assert f'from(bucket: "{BUCKET}")' in query, (d.uid, p["title"])
                found = site_filter.findall(query)
                assert found, (d.uid, p["title"], query)
                for literal in found:
                    if literal == "${site}" or literal == "":
                        assert "site" in variables
                    else:
                        assert literal in registry.sites
                for var in re.findall(r"\$\{(\w+)(?::\w+)?\}", query):
                    assert var in variables, (d.uid, p["title"], var)


def test_site_dashboards_have_site_and_device_variables(
    registry: Registry, generated: list[GeneratedDashboard]
) -> None:
    for d in generated:
        site = next((s for s in registry.sites.values() if s.id in d.model["tags"]), None)
        if site is None:
            continue
        variables = {v["name"]: v for v in d.model["templating"]["list"]}
        assert [o["value"] for o in variables["site"]["options"]] == [site.id]
        assert {o["value"] for o in variables["device"]["options"]} == set(site.devices)


def test_strain_panel_per_gauge_with_its_limit_lines(registry: Registry) -> None:
    by_uid = {d.uid: d.model for d in build_dashboards(registry, BUCKET)}
    for series in registry.series:
        if series.key.measurement != "strain":
            continue
        model = next(m for m in by_uid.values() if series.key.site in m["tags"])
        title = f"Strain {series.key.device}/{series.key.channel or '-'}"
        panel = next(p for p in model["panels"] if p["title"] == title)
        steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        if series.limit is None:
            assert steps == [None]
        else:
            assert -series.limit in steps
            assert series.limit in steps
            assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
        # The mean (A), the flagged readings counted per window (B), and the envelope.
        assert [t["refId"] for t in panel["targets"]] == ["A", "B", "min", "max"]
        assert 'r._field == "anomaly"' in panel["targets"][1]["query"]


def test_school_co2_bands_and_traffic_light_per_room(registry: Registry) -> None:
    for site in registry.sites.values():
        if site.kind is not SiteKind.SCHOOL:
            continue
        model = next(
            d.model for d in build_dashboards(registry, BUCKET) if site.id in d.model["tags"]
        )
        for dev_id, dev in site.devices.items():
            co2 = dev.series.get("co2")
            if co2 is None:
                continue
            expected = [None, co2.warn or 1000.0, co2.alarm or 2000.0]
            for kind, title in (("timeseries", f"CO2 {dev_id}"), ("stat", dev_id)):
                panel = next(p for p in model["panels"] if p["title"] == title)
                assert panel["type"] == kind
                steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                assert [s["value"] for s in steps] == expected


def test_overview_maps_every_located_site(
    registry: Registry, generated: list[GeneratedDashboard]
) -> None:
    overview = next(d.model for d in generated if d.folder is FOLDERS["city"])
    geomap = next(p for p in overview["panels"] if p["type"] == "geomap")
    query = geomap["targets"][0]["query"]
    for site in registry.sites.values():
        assert (f'site: "{site.id}"' in query) == (site.lat is not None), site.id


def test_a_new_bridge_in_the_registry_gets_its_dashboard() -> None:
    extra = REGISTRY_YAML + (
        "  new-bridge:\n    kind: bridge\n    name: Neue Brücke\n    devices:\n"
        "      sg-9:\n        channels:\n          g1: [strain]\n"
    )
    before = {d.uid for d in build_dashboards(parse_registry(REGISTRY_YAML), BUCKET)}
    after = build_dashboards(parse_registry(extra), BUCKET)
    new = [d for d in after if d.uid not in before]
    assert [d.folder for d in new] == [FOLDERS["bridge"]]
    assert new[0].model["title"] == "Bridge: Neue Brücke"
    assert "r.device =~ /^sg-9$/" in render(new[0].model).replace("\\", "")


def test_provisioning_points_each_folder_at_its_files(tmp_path: Path) -> None:
    registry = load_registry(EXAMPLE)
    write_build(registry, TARGET, tmp_path)
    providers = yaml.safe_load(
        (tmp_path / "provisioning/dashboards/stadtpuls.yaml").read_text(encoding="utf-8")
    )["providers"]
    for d in build_dashboards(registry, BUCKET):
        provider = next(p for p in providers if p["folderUid"] == d.folder.uid)
        assert provider["options"]["path"].endswith("/" + d.folder.path)
        assert (tmp_path / "dashboards" / d.filename).is_file()
    datasources = yaml.safe_load(
        (tmp_path / "provisioning/datasources/stadtpuls.yaml").read_text(encoding="utf-8")
    )["datasources"]
    influx = next(ds for ds in datasources if ds["type"] == "influxdb")
    assert influx["jsonData"]["version"] == "Flux"
    assert influx["jsonData"]["defaultBucket"] == BUCKET
    assert influx["secureJsonData"]["token"].startswith("$__file{")


def test_build_removes_dashboards_of_sites_gone_from_the_registry(tmp_path: Path) -> None:
    write_build(load_registry(EXAMPLE), TARGET, tmp_path)
    write_build(parse_registry(REGISTRY_YAML), TARGET, tmp_path)
    on_disk = {p.stem for p in (tmp_path / "dashboards").rglob("*.json")}
    assert on_disk == {d.uid for d in build_dashboards(parse_registry(REGISTRY_YAML), BUCKET)}


# -- what the panels of a bridge draw --------------------------------------------------

ENVELOPED = ("strain", "inclination", "crack_width")
_WINDOW_FN = re.compile(r"aggregateWindow\(every: v\.windowPeriod, fn: (\w+), createEmpty: false\)")
_FNS: dict[str, Callable[[Sequence[float]], float]] = {
    "mean": statistics.fmean, "min": min, "max": max, "count": len,
}  # fmt: skip


def series_panel(registry: Registry, measurement: str, device: str, channel: str) -> Any:
    site = next(s for s in registry.sites.values() if device in s.devices)
    model = next(d.model for d in build_dashboards(registry, BUCKET) if site.id in d.model["tags"])
    title = {"strain": "Strain", "inclination": "Inclination", "crack_width": "Crack width"}
    return next(
        p for p in model["panels"] if p["title"] == f"{title[measurement]} {device}/{channel}"
    )


def drawn(panel: dict[str, Any], readings: Sequence[float], per_window: int) -> dict[str, Any]:
    """What each of the panel's value queries gives for ``readings`` when Grafana's window
    holds ``per_window`` of them (zoomed out): its window function applied per window."""
    out = {}
    for t in panel["targets"]:
        if 'r._field == "value"' not in t["query"]:
            continue
        (fn,) = _WINDOW_FN.findall(t["query"])
        windows = [readings[i : i + per_window] for i in range(0, len(readings), per_window)]
        out[t["refId"]] = [_FNS[fn](w) for w in windows]
    return out


def test_strain_inclination_and_crack_width_draw_their_envelope() -> None:
    registry = load_registry(EXAMPLE)
    found = set()
    for s in registry.series:
        if s.key.measurement not in ENVELOPED:
            continue
        panel = series_panel(registry, s.key.measurement, s.key.device, s.key.channel)
        found.add(s.key.measurement)
        fns = {t["refId"]: _WINDOW_FN.findall(t["query"]) for t in panel["targets"]}
        assert fns == {"A": ["mean"], "B": ["count"], "min": ["min"], "max": ["max"]}
        for t in panel["targets"]:
            assert f"r.device =~ /^{s.key.device}$/" in t["query"]
            assert f'r.channel == "{s.key.channel}"' in t["query"]
        looks = {
            o["matcher"]["options"]: {p["id"]: p["value"] for p in o["properties"]}
            for o in panel["fieldConfig"]["overrides"]
        }
        # min and max are one shaded band (max filled down to min), the mean a line in it.
        assert looks["min"]["displayName"] == "min"
        assert looks["max"]["displayName"] == "max"
        assert looks["max"]["custom.fillBelowTo"] == "min"
        assert looks["A"]["displayName"] == "mean"
    assert found == set(ENVELOPED)


def test_a_lorry_over_the_design_limit_is_not_averaged_away() -> None:
    registry = load_registry(EXAMPLE)
    gauge = registry.sites["remberg"].devices["sg-1"].series["g2/strain"]
    assert gauge.limit == 750
    panel = series_panel(registry, "strain", "sg-1", "g2")
    limit_lines = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert gauge.limit in limit_lines
    assert -gauge.limit in limit_lines
    # A day at 1 Hz zoomed out to a window of 10 minutes: 300 microstrain of temperature
    # load, and one lorry of 4 s at 820 (over the limit of 750) in compression as well.
    day = [300.0] * 86_400
    day[40_000:40_004] = [820.0, 835.0, 829.0, 810.0]
    day[60_000:60_003] = [-790.0, -805.0, -760.0]
    got = drawn(panel, day, per_window=600)
    assert max(got["A"]) < gauge.limit  # the mean alone hides both
    assert min(got["A"]) > -gauge.limit
    assert max(got["max"]) == 835.0  # the band reaches over the limit line
    assert min(got["min"]) == -805.0


def test_flagged_readings_are_counted_per_window_without_gaps(
    generated: list[GeneratedDashboard],
) -> None:
    seen = 0
    for d in generated:
        if d.folder not in (FOLDERS["bridge"], FOLDERS["school"]):
            continue
        for p in data_panels(d.model):
            if p["type"] != "timeseries":
                continue
            flagged = [t for t in p["targets"] if 'r._field == "anomaly"' in t["query"]]
            assert len(flagged) == 1, (d.uid, p["title"])
            query = flagged[0]["query"]
            seen += 1
            # One point per window, however long the range (a year: ~1000 points), never
            # a row per flagged reading.
            assert _WINDOW_FN.findall(query) == ["count"], query
            assert "pivot" not in query
            # A reading whose only flag is gap (bit 7, 128) is left out.
            assert "r._value != 0 and r._value != 128" in query
            bars = next(o for o in p["fieldConfig"]["overrides"] if o["matcher"]["options"] == "B")
            props = {x["id"]: x["value"] for x in bars["properties"]}
            assert props["custom.drawStyle"] == "bars"
            assert props["custom.axisPlacement"] == "right"
            # Every value query of a time series is windowed as well.
            for t in p["targets"]:
                assert _WINDOW_FN.search(t["query"]), (d.uid, p["title"], t["refId"])
    assert seen


def test_build_with_the_sqlite_store_says_the_dashboards_need_influxdb(
    tmp_path: Path, config_file: ConfigWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config_file(
        {"registry": "registry.yaml", "data_dir": "data"}, registry_yaml=REGISTRY_YAML
    )
    result = CliRunner().invoke(
        main, ["dashboards", "build", "--config", str(cfg), "--out", str(tmp_path / "g")]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout
    assert "store.backend is 'sqlite'" in result.stderr
    assert "store.backend: influxdb" in result.stderr
    monkeypatch.setenv("STADTPULS_STORE__BACKEND", "influxdb")
    monkeypatch.setenv("STADTPULS_INFLUXDB__TOKEN", "a-real-looking-influx-token-0123456789")
    result = CliRunner().invoke(
        main, ["dashboards", "build", "--config", str(cfg), "--out", str(tmp_path / "g")]
    )
    assert result.exit_code == 0, result.output
    assert "sqlite" not in result.stderr
