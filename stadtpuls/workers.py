"""Scale-out: what one ingest worker of several takes from the registry and the broker.

Each worker subscribes to the topics of the sites it owns (``devices.partition``) under its
own client id, so the broker keeps one persistent session per worker: while a worker is
down, its sites' messages queue for it alone, and it resumes them when it comes back. Plain
MQTT 5 shared subscriptions would hand one series' readings to several workers in turn and
split its anomaly state between them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from devices.partition import owned_sites, restrict
from devices.registry import Registry
from devices.topics import TopicScheme
from stadtpuls.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerShare:
    registry: Registry  # only this worker's sites, series numbered from 0
    subscriptions: list[str]
    # Filters of the other workers' sites, the unpartitioned wildcards and the filters of
    # earlier versions: a session kept from before a change of the worker count, or of
    # the filters, may still hold them.
    unsubscriptions: list[str]
    client_id: str


def worker_share(settings: Settings, registry: Registry) -> WorkerShare:
    w = settings.worker
    topics = TopicScheme(settings.topic_prefix)
    if w.count == 1:
        return WorkerShare(
            registry,
            topics.subscriptions(),
            topics.former_subscriptions(()),
            settings.mqtt.client_id,
        )
    mine = owned_sites(registry, w.index, w.count)
    others = [site for site in registry.sites if site not in set(mine)]
    if mine:
        log.info(
            "worker %d of %d: %d of %d sites", w.index, w.count, len(mine), len(registry.sites)
        )
    else:
        log.warning("worker %d of %d owns none of the registry's sites", w.index, w.count)
    return WorkerShare(
        registry=restrict(registry, mine),
        subscriptions=topics.site_subscriptions(mine),
        # Topics of no registered site reach no worker: only a catch-all filter would
        # deliver them, and it would deliver every other worker's sites too.
        unsubscriptions=[
            *topics.site_subscriptions(others),
            *topics.subscriptions(),
            *topics.former_subscriptions(registry.sites),
        ],
        client_id=f"{settings.mqtt.client_id}-{w.index}",
    )
