"""Runs the background jobs of one process on an APScheduler background scheduler.

Each job runs at most one instance at a time in this process (max_instances=1)
and missed runs collapse into one (coalesce). Across processes, each job
takes its own lock (the scanners and the withdrawal senders: a PostgreSQL
advisory lock per chain, custody/jobs/locks.py), so
several core instances can all run the scheduler.
"""
from __future__ import annotations

import datetime
import logging
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from custody.config_pins import ConfigChanged
from custody.deposits.scanner import Scanner

log = logging.getLogger(__name__)


class JobRunner:
    def __init__(self) -> None:
        self.scheduler = BackgroundScheduler(
            timezone=datetime.timezone.utc,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self.stopped: dict[str, str] = {}  # job id -> why it was stopped

    def add_scanner(self, scanner: Scanner, interval_s: float, guard: Callable[[], None] | None = None) -> None:
        self.scheduler.add_job(
            self._guarded(f"scan:{scanner.chain}", scanner.tick, guard),
            IntervalTrigger(seconds=interval_s), id=f"scan:{scanner.chain}",
            name=f"scan {scanner.chain}", next_run_time=datetime.datetime.now(datetime.timezone.utc))

    def add_withdrawals(self, sender, interval_s: float, guard: Callable[[], None] | None = None) -> None:
        self.scheduler.add_job(
            self._guarded(f"withdrawals:{sender.chain}", sender.run, guard),
            IntervalTrigger(seconds=interval_s), id=f"withdrawals:{sender.chain}",
            name=f"withdrawals {sender.chain}", next_run_time=datetime.datetime.now(datetime.timezone.utc))

    def _guarded(self, job_id: str, run: Callable[[], None], guard: Callable[[], None] | None):
        """run, preceded by guard; a ConfigChanged from guard pauses the job (until a restart)."""
        if guard is None:
            return run

        def job() -> None:
            try:
                guard()
            except ConfigChanged as exc:
                log.error("job %s stopped: %s", job_id, exc)
                self.scheduler.pause_job(job_id)
                self.stopped[job_id] = str(exc)
                return
            run()

        return job

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    @property
    def job_ids(self) -> list[str]:
        return [job.id for job in self.scheduler.get_jobs()]
