"""Scheduled work (apscheduler): the engine's tick (silence, health, repeats), the daily
digest per site, and store maintenance."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler

from alerts.config import AlertsConfig

log = logging.getLogger(__name__)


class AlertJobs:
    def __init__(
        self,
        config: AlertsConfig,
        tick: Callable[[], None],
        digest: Callable[[], None] | None = None,
        maintenance: Sequence[Callable[[], None]] = (),
    ) -> None:
        self._scheduler = BackgroundScheduler(timezone=ZoneInfo(config.timezone))
        # A slow tick (a locked database) is skipped, not queued: the next one catches up.
        self._scheduler.add_job(
            _guard("tick", tick),
            "interval",
            seconds=config.tick.total_seconds(),
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            id="tick",
        )
        if digest is not None and config.digest_at is not None:
            at = config.digest_at
            self._scheduler.add_job(
                _guard("digest", digest), "cron", hour=at.hour, minute=at.minute, id="digest"
            )
        for i, job in enumerate(maintenance):
            # At night, when classrooms are empty and lorries few.
            self._scheduler.add_job(
                _guard("maintenance", job), "cron", hour=3, minute=17 + i, id=f"maintenance-{i}"
            )

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)


def _guard(name: str, job: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:  # a failing job must not stop the scheduler's other jobs
            log.exception("scheduled job failed", extra={"job": name})

    return run
