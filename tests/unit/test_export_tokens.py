"""Read tokens: only a hash is stored, expiry and revocation refuse, the rate cap counts
every attempt of a token within a minute, and the export log keeps what was asked."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from export.tokens import RateLimited, TokenRefused, TokenStore

NS = 1_000_000_000
NOW = 1_795_392_000 * NS


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TokenStore]:
    s = TokenStore(tmp_path / "tokens.sqlite")
    yield s
    s.close()


def test_only_the_hash_is_stored(store: TokenStore, tmp_path: Path) -> None:
    token_id, secret = store.create("s1", None, NOW + 3600 * NS, "7b", NOW)
    assert len(secret) > 40
    conn = sqlite3.connect(tmp_path / "tokens.sqlite")
    dump = "\n".join(conn.iterdump())
    conn.close()
    assert secret not in dump
    (stored,) = [t for t in store.all() if t.id == token_id]
    assert stored.status(NOW) == "active"
    assert hashlib.sha256(secret.encode()).hexdigest().upper() in dump.upper()
    assert (tmp_path / "tokens.sqlite").stat().st_mode & 0o077 == 0


def test_scope_expiry_and_revocation(store: TokenStore) -> None:
    token_id, secret = store.create("s1", "room-1", NOW + 60 * NS, "", NOW)
    scope = store.verify(secret, NOW)
    assert (scope.site, scope.device) == ("s1", "room-1")
    with pytest.raises(TokenRefused, match="expired"):
        store.verify(secret, NOW + 60 * NS)
    assert store.revoke(token_id, NOW)
    assert not store.revoke(token_id, NOW)
    with pytest.raises(TokenRefused, match="revoked"):
        store.verify(secret, NOW)
    with pytest.raises(TokenRefused, match="unknown"):
        store.verify(secret + "x", NOW)
    with pytest.raises(ValueError):
        store.create("s1", None, NOW, "", NOW)


def test_rate_cap_per_token_and_log(store: TokenStore) -> None:
    _, secret = store.create("s1", None, NOW + 3600 * NS, "", NOW)
    scope = store.verify(secret, NOW)
    first = store.begin_export(scope, "a", NOW, per_minute=2)
    store.begin_export(scope, "b", NOW + 10 * NS, per_minute=2)
    with pytest.raises(RateLimited) as refused:
        store.begin_export(scope, "c", NOW + 20 * NS, per_minute=2)
    assert refused.value.retry_after_s == 40
    store.finish_export(first, "ok", 12, 345)
    # A minute after the first attempt one slot is free again.
    store.begin_export(scope, "d", NOW + 61 * NS, per_minute=3)
    entries = store.entries(scope.token_id)
    assert [(e.what, e.status) for e in entries] == [
        ("d", "started"),
        ("c", "rate_limited"),
        ("b", "started"),
        ("a", "ok"),
    ]
    assert (entries[-1].rows, entries[-1].bytes) == (12, 345)
    (info,) = store.all()
    assert info.exports == 1
