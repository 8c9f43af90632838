"""Property tests of the topic scheme: whatever string arrives as a topic, ``parse`` either
returns ids drawn from the safe alphabet or raises ``TopicRejected``; every topic the scheme
builds parses back to what built it; one hostile character anywhere in an id is refused."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.topics import TopicId, TopicRejected, TopicScheme
from devices.vocabulary import SiteKind

# Wall-clock deadlines fail at random on a loaded machine; the suite's timeout still applies.
QUICK = settings(deadline=None, max_examples=60)

SAFE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
ids = st.from_regex(SAFE, fullmatch=True)
# Characters that break a topic, a line-protocol key, a query or a reader's eye.
HOSTILE_CHARS = [",", "=", " ", "\n", "\r", "\t", '"', "'", "\\", "\0", "/", "+", "#", "\u200b",
                 "\ufeff", "\u00a0", "\u0455", "A", ".", "*", ";", "$", "{"]  # fmt: skip
prefixes = st.lists(ids, min_size=1, max_size=3).map("/".join)
topic_chars = st.sampled_from(
    ["stadtpuls/", "bridge/", "school/", "b1/", "/", "+", "#", *HOSTILE_CHARS]
)


def assert_safe(parsed: TopicId) -> None:
    for part in (parsed.site, parsed.device):
        assert SAFE.fullmatch(part), part


@QUICK
@given(st.text())
def test_arbitrary_text_parses_to_safe_ids_or_is_refused(topic: str) -> None:
    try:
        parsed = TopicScheme().parse(topic)
    except TopicRejected as exc:
        message = str(exc)
    else:
        assert_safe(parsed)
        return
    assert message, "a refusal must say what is wrong"


@settings(QUICK, max_examples=150)
@given(st.lists(topic_chars | ids, max_size=12).map("".join))
def test_topic_like_text_parses_to_safe_ids_or_is_refused(topic: str) -> None:
    try:
        parsed = TopicScheme().parse(topic)
    except TopicRejected:
        return
    assert_safe(parsed)
    assert topic == TopicScheme().readings(parsed.kind, parsed.site, parsed.device)


@QUICK
@given(prefixes, st.sampled_from(SiteKind), ids, ids)
def test_built_topics_parse_back(prefix: str, kind: SiteKind, site: str, device: str) -> None:
    scheme = TopicScheme(prefix)
    assert scheme.parse(scheme.readings(kind, site, device)) == TopicId(kind, site, device)


@QUICK
@given(prefixes, st.sampled_from(SiteKind), ids, ids)
def test_alert_topics_are_not_readings(prefix: str, kind: SiteKind, site: str, device: str) -> None:
    scheme = TopicScheme(prefix)
    with pytest.raises(TopicRejected):
        scheme.parse(scheme.alerts(kind, site, device))


@QUICK
@given(ids, st.sampled_from(HOSTILE_CHARS), st.data(), st.booleans())
def test_a_hostile_character_in_an_id_is_refused(
    good: str, bad: str, data: st.DataObject, in_site: bool
) -> None:
    at = data.draw(st.integers(0, len(good)))
    spoiled = good[:at] + bad + good[at:]
    site, device = (spoiled, "sg1") if in_site else ("b1", spoiled)
    with pytest.raises(TopicRejected):
        TopicScheme().parse(f"stadtpuls/bridge/{site}/{device}")


@QUICK
@given(st.text(max_size=30), st.sampled_from(SiteKind))
def test_any_accepted_prefix_round_trips(prefix: str, kind: SiteKind) -> None:
    try:
        scheme = TopicScheme(prefix)
    except ValueError:
        return
    # Even a prefix that looks like part of the scheme ("x/bridge/b1") must not confuse it.
    assert scheme.parse(scheme.readings(kind, "b1", "sg1")) == TopicId(kind, "b1", "sg1")
