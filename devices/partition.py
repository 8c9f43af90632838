"""Which ingest worker owns which site, when several share the stream.

A site's readings all go to one worker, so the per-series anomaly state of its devices lives
in one process. The owner is chosen by rendezvous (highest random weight) hashing of the
site id: every worker computes the same answer from the site id and the worker count alone,
so adding a site to the registry needs no coordination and moves no other site, and going
from ``n`` to ``n + 1`` workers moves only the sites the new worker wins (about one in
``n + 1``), where a plain ``hash % n`` would move almost all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace

from devices.registry import Device, Registry, Series, Site


def _weight(site: str, worker: int) -> int:
    # A cryptographic hash, not hash(): Python salts str hashes per process, and every
    # worker process must reach the same answer.
    digest = hashlib.blake2b(f"{site}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def site_owner(site: str, count: int) -> int:
    """The index (0 to ``count - 1``) of the worker that owns ``site``."""
    if count < 1:
        raise ValueError(f"worker count must be at least 1, not {count}")
    return max(range(count), key=lambda worker: _weight(site, worker))


def owned_sites(registry: Registry, index: int, count: int) -> list[str]:
    """The registry's sites that worker ``index`` of ``count`` owns, in registry order."""
    if not 0 <= index < count:
        raise ValueError(f"worker index {index} is outside 0..{count - 1}")
    return [site for site in registry.sites if site_owner(site, count) == index]


def restrict(registry: Registry, sites: Iterable[str]) -> Registry:
    """The registry with only ``sites``, its series renumbered from 0.

    A worker runs its whole pipeline over this share: the decoder, the anomaly state, the
    store's series table and the alert engine (whose device-silence check must not page for
    devices another worker is receiving) all see the same series indexes.
    """
    keep = set(sites)
    unknown = keep - set(registry.sites)
    if unknown:
        raise ValueError(f"sites not in the registry: {', '.join(sorted(unknown))}")
    out_sites: dict[str, Site] = {}
    out_series: list[Series] = []
    out_devices: dict[tuple[str, str], Device] = {}
    for site_id, site in registry.sites.items():
        if site_id not in keep:
            continue
        devices: dict[str, Device] = {}
        for device_id, device in site.devices.items():
            by_name: dict[str, Series] = {}
            for name, series in device.series.items():
                by_name[name] = replace(series, index=len(out_series))
                out_series.append(by_name[name])
            devices[device_id] = replace(device, series=by_name)
            out_devices[(site_id, device_id)] = devices[device_id]
        out_sites[site_id] = replace(site, devices=devices)
    return Registry(out_sites, tuple(out_series), out_devices)
