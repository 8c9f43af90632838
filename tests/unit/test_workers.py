"""Scale-out: which worker owns which site, a worker's share of the registry and topics,
and the worker settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.partition import owned_sites, restrict, site_owner
from devices.registry import parse_registry
from devices.topics import TopicScheme
from stadtpuls.settings import ConfigError, load_settings
from stadtpuls.workers import worker_share
from tests.support.registry import sample_registry

SITES = [f"site-{n}" for n in range(300)]


def many_sites_registry() -> str:
    return "sites:\n" + "".join(
        f"  {s}:\n    kind: school\n    name: {s}\n    devices:\n"
        "      room-1: {measurements: [co2, temperature]}\n"
        for s in SITES
    )


def test_every_site_has_exactly_one_owner() -> None:
    registry = parse_registry(many_sites_registry())
    shares = [owned_sites(registry, i, 3) for i in range(3)]
    assert sorted(s for share in shares for s in share) == sorted(SITES)
    # Hashing spreads many sites roughly evenly.
    assert all(60 <= len(share) <= 140 for share in shares)


def test_a_new_worker_takes_sites_only_for_itself() -> None:
    moved = [s for s in SITES if site_owner(s, 3) != site_owner(s, 4)]
    assert all(site_owner(s, 4) == 3 for s in moved)
    assert 0 < len(moved) < len(SITES) // 2


def test_one_worker_owns_everything() -> None:
    assert {site_owner(s, 1) for s in SITES} == {0}


def test_worker_index_and_count_are_checked() -> None:
    registry = sample_registry()
    with pytest.raises(ValueError, match="outside"):
        owned_sites(registry, 3, 3)
    with pytest.raises(ValueError, match="at least 1"):
        site_owner("b1", 0)


def test_restricted_registry_renumbers_series_consistently() -> None:
    full = sample_registry()
    share = restrict(full, ["s1", "s2"])
    assert list(share.sites) == ["s1", "s2"]
    assert [s.index for s in share.series] == list(range(len(share.series)))
    assert {s.key.site for s in share.series} == {"s1", "s2"}
    for device in share.devices():
        for series in device.series.values():
            assert share.series[series.index] is series
    assert share.device("b1", "sg1") is None
    assert share.device("s1", "room-1") is not None
    with pytest.raises(ValueError, match="nowhere"):
        restrict(full, ["nowhere"])


def test_site_subscriptions_cover_every_kind_and_depth_of_each_site() -> None:
    assert TopicScheme("city/x").site_subscriptions(["b1", "s1"]) == [
        "city/x/bridge/b1/#",
        "city/x/school/b1/#",
        "city/x/bridge/s1/#",
        "city/x/school/s1/#",
    ]


def test_worker_share_of_settings(tmp_path: Path) -> None:
    registry = sample_registry()
    single = worker_share(load_settings(None, data_dir=tmp_path), registry)
    assert single.registry is registry
    assert single.subscriptions == TopicScheme().subscriptions()
    # A session kept from before the filters reached every depth drops the old ones.
    assert single.unsubscriptions == ["stadtpuls/bridge/+/+", "stadtpuls/school/+/+"]
    assert single.client_id == "stadtpuls-ingest"

    shares = []
    for index in range(2):
        settings = load_settings(None, data_dir=tmp_path, worker={"index": index, "count": 2})
        assert settings.worker_dir == tmp_path / f"worker-{index}"
        assert settings.database_path.parent == settings.worker_dir
        shares.append(worker_share(settings, registry))
    assert [s.client_id for s in shares] == ["stadtpuls-ingest-0", "stadtpuls-ingest-1"]
    assert sorted(site for s in shares for site in s.registry.sites) == sorted(registry.sites)
    for mine, other in (shares, shares[::-1]):
        # What one worker drops from a kept session is what the other subscribes to.
        assert set(other.subscriptions) <= set(mine.unsubscriptions)
        assert not set(mine.subscriptions) & set(mine.unsubscriptions)
        # And the one-level filters of earlier versions, its own sites' included.
        assert set(TopicScheme().former_subscriptions(registry.sites)) <= set(mine.unsubscriptions)


def test_worker_index_must_be_below_count() -> None:
    with pytest.raises(ConfigError, match=r"worker\.index \(3\) must be below worker\.count"):
        load_settings(None, worker={"index": 3, "count": 3})
    with pytest.raises(ConfigError, match=r"worker\.count"):
        load_settings(None, worker={"count": 0})
