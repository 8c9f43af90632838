"""The subjects of ``source: nats``: the servers' partition mapping, the consumers' filters
and the way back from a stored message's subject to the device's MQTT topic. The partition
numbers below are what a real nats-server 2.15 mapping gave these sites (checked against
a cluster by hand; ``tests/integration/test_nats.py`` relies on them matching)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from devices.vocabulary import SiteKind
from ingest.nats_source import NatsSubjects, subject_to_topic, topic_to_subject
from stadtpuls.cli import main
from stadtpuls.settings import load_settings
from tests.support.config import ConfigWriter
from tests.support.registry import REGISTRY_YAML


@pytest.mark.parametrize(("site", "partition"), [("b1", 4), ("s2", 0), ("b//x", 1)])
def test_partitions_are_those_of_the_servers_mapping(site: str, partition: int) -> None:
    # "b//x" is how the MQTT listener names the level "b.x".
    assert NatsSubjects("stadtpuls", 8).partition_of(site.replace("//", ".")) == partition


def test_the_mapping_covers_every_kind_and_nothing_else() -> None:
    m = NatsSubjects("city/dortmund", 32).mappings()
    assert m == {
        f"$MQTT.msgs.city.dortmund.{k.value}.*.>": (
            f"$MQTT.msgs.city.dortmund.{{{{partition(32,1)}}}}.{k.value}.{{{{wildcard(1)}}}}.>"
        )
        for k in SiteKind
    }


@pytest.mark.parametrize(
    "topic",
    ["stadtpuls/bridge/b1/sg1", "stadtpuls/school/s-2/r1/extra/deep", "stadtpuls/bridge/b1/s.g1"],
)
def test_a_partitioned_subject_gives_back_its_topic(topic: str) -> None:
    subjects = NatsSubjects("stadtpuls", 8)
    site = topic.split("/")[2]
    p = subjects.partition_of(site)
    tokens = topic_to_subject(topic).split(".")
    subject = ".".join(["$MQTT", "msgs", tokens[0], str(p), *tokens[1:]])
    assert subjects.topic(subject) == (topic, p)


def test_the_catch_all_gives_back_short_topics() -> None:
    subjects = NatsSubjects("stadtpuls", 8)
    assert subjects.topic("$MQTT.msgs.stadtpuls.bridge.b1") == ("stadtpuls/bridge/b1", None)
    assert subjects.topic("$MQTT.msgs.stadtpuls.bridge") == ("stadtpuls/bridge", None)
    assert sorted(subjects.catch_all_filter()) == sorted(
        f"$MQTT.msgs.stadtpuls.{k.value}{tail}" for k in SiteKind for tail in ("", ".*")
    )


def test_a_topic_that_only_looks_partitioned_keeps_its_literal_topic() -> None:
    """A device publishing on ``stadtpuls/3/bridge/b1/sg1`` must not pass as b1's gauge:
    3 is not b1's partition, so the decoder sees the topic as sent and quarantines it."""
    subjects = NatsSubjects("stadtpuls", 8)
    wrong = (subjects.partition_of("b1") + 1) % 8
    subject = f"$MQTT.msgs.stadtpuls.{wrong}.bridge.b1.sg1"
    assert subjects.topic(subject) == (f"stadtpuls/{wrong}/bridge/b1/sg1", None)


def test_levels_round_trip_through_the_listeners_naming() -> None:
    for topic in ["a/b.c/d", "a//b", "/a/b", "a/b/"]:
        assert subject_to_topic(topic_to_subject(topic).split(".")) == topic


def test_every_partition_and_the_catch_all_has_a_consumer() -> None:
    consumers = NatsSubjects("stadtpuls", 4, "city").consumers()
    assert consumers == {
        "city-p000": ["$MQTT.msgs.stadtpuls.0.>"],
        "city-p001": ["$MQTT.msgs.stadtpuls.1.>"],
        "city-p002": ["$MQTT.msgs.stadtpuls.2.>"],
        "city-p003": ["$MQTT.msgs.stadtpuls.3.>"],
        "city-other": NatsSubjects("stadtpuls", 4).catch_all_filter(),
    }


def test_nats_workers_take_no_index(config_file: ConfigWriter) -> None:
    path = config_file({"source": "nats", "worker": {"index": 0, "count": 2}})
    with pytest.raises(Exception, match=r"source is nats, which hands partitions"):
        load_settings(path)


def test_a_nats_password_needs_a_user(config_file: ConfigWriter) -> None:
    path = config_file({"source": "nats", "nats": {"password": "s3cret-enough"}})
    with pytest.raises(Exception, match=r"nats\.password is set without nats\.user"):
        load_settings(path)


def test_server_config_prints_the_mapping(config_file: ConfigWriter) -> None:
    path = config_file(
        {"source": "nats", "nats": {"partitions": 16}, "registry": "registry.yaml"},
        registry_yaml=REGISTRY_YAML,
    )
    result = CliRunner().invoke(main, ["nats", "server-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    mapping = NatsSubjects("stadtpuls", 16).mappings()
    for src, dst in mapping.items():
        assert f'"{src}": "{dst}"' in result.output
    assert result.output.count("{{partition(16,1)}}") == len(SiteKind)


def test_check_config_refuses_an_unreachable_cluster(config_file: ConfigWriter) -> None:
    from stadtpuls.broker import free_port

    port = free_port()
    path = config_file(
        {
            "source": "nats",
            "nats": {"servers": [f"nats://127.0.0.1:{port}"]},
            "registry": "registry.yaml",
        },
        registry_yaml=REGISTRY_YAML,
    )
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code != 0
    assert "cannot reach NATS" in result.output
