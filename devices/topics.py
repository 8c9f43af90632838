"""The topic scheme: readings on ``{prefix}/{kind}/{site}/{device}``, alerts on
``{prefix}/alerts/{kind}/{site}/{device}``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from devices.registry import ID_PATTERN
from devices.vocabulary import SiteKind

DEFAULT_PREFIX = "stadtpuls"
# fullmatch, not match: the pattern's ``$`` also matches before a trailing newline, so
# ``match`` would let ``sg1\n`` through as an id.
_ID_RE = re.compile(ID_PATTERN)


@dataclass(frozen=True, slots=True)
class TopicId:
    kind: SiteKind
    site: str
    device: str


class TopicRejected(ValueError):
    """The topic does not follow the scheme; the message names what is wrong."""


class TopicScheme:
    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or any(c in prefix for c in "+#\0") or prefix.endswith("/"):
            raise ValueError(f"invalid topic prefix {prefix!r}")
        self.prefix = prefix
        self._head = prefix + "/"
        self._depth = prefix.count("/") + 4

    def subscriptions(self) -> list[str]:
        """Topic filters the service subscribes to, one per site kind.

        Everything under a kind, however deep: a topic with a level too many or too few is
        delivered and quarantined (``bad_topic``) rather than accepted by the broker and
        received by no one. ``{prefix}/alerts/...`` is not subscribed: it is the service's
        own output."""
        return [f"{self.prefix}/{kind.value}/#" for kind in SiteKind]

    def site_subscriptions(self, sites: Iterable[str]) -> list[str]:
        """Topic filters for just these sites (a worker's share), one per site and kind.

        Every kind, not only the site's own: a device publishing under the wrong kind must
        still reach the site's worker, which quarantines it, as the wildcard would. Every
        depth under the site, for the same reason as ``subscriptions``."""
        return [f"{self.prefix}/{kind.value}/{site}/#" for site in sites for kind in SiteKind]

    def former_subscriptions(self, sites: Iterable[str]) -> list[str]:
        """The filters earlier versions subscribed to (one level deep only), which a kept
        session may still hold: the kinds' and these sites'. Left in place beside the
        current ones they would deliver a message twice."""
        return [
            *(f"{self.prefix}/{kind.value}/+/+" for kind in SiteKind),
            *(f"{self.prefix}/{kind.value}/{site}/+" for site in sites for kind in SiteKind),
        ]

    def readings(self, kind: SiteKind, site: str, device: str) -> str:
        return f"{self.prefix}/{kind.value}/{site}/{device}"

    def alerts(self, kind: SiteKind, site: str, device: str) -> str:
        return f"{self.prefix}/alerts/{kind.value}/{site}/{device}"

    def parse(self, topic: str) -> TopicId:
        if not topic.startswith(self._head):
            raise TopicRejected(f"topic {topic!r} is outside prefix {self.prefix!r}")
        parts = topic.split("/")
        if len(parts) != self._depth:
            levels = len(parts) - self._depth
            count = f"{abs(levels)} level{'s' if abs(levels) > 1 else ''}"
            raise TopicRejected(
                f"topic {topic!r} has {count} {'too many' if levels > 0 else 'too few'}: "
                f"readings go to {self.prefix}/{{kind}}/{{site}}/{{device}}"
            )
        kind, site, device = parts[-3:]
        try:
            site_kind = SiteKind(kind)
        except ValueError:
            raise TopicRejected(f"topic kind {kind!r} is neither 'bridge' nor 'school'") from None
        for label, value in (("site", site), ("device", device)):
            if _ID_RE.fullmatch(value) is None:
                raise TopicRejected(
                    f"{label} id {value!r} in the topic has characters outside [a-z0-9_-]"
                )
        return TopicId(site_kind, site, device)
