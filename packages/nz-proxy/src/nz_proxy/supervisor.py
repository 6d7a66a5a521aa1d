"""Background work, supervised (STYLE 16).

Every background job of a gateway process (the audit writer, discovery, revocation,
lease renewal, settlement replay, reaping, sweeping) is a *step*: one unit of work that
returns how long to wait before the next one. :class:`Supervisor` runs each job's steps
for the life of the process. A step that raises does not end its job: the failure is
logged, counted, and the job is stepped again after a backoff that doubles up to
:data:`MAX_BACKOFF_S` and resets at the first step that succeeds.

A dependency that is down (Redis, the database, the backend) is expected now and then:
it is logged as a warning when it starts failing, not at every retry. Anything else is
a crash, logged with its traceback every time. A job whose last :data:`DYING_AFTER`
steps all crashed is *dying*, and ``/readyz`` says so.

Stopping lets a step in progress finish (a query is not cut in half) and ends the
waits between steps at once; a step still running after the grace is cancelled, and an
``interruptible`` one (it only waits) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import asyncpg
import structlog
from redis.exceptions import RedisError

from nz_core.database import UNREACHABLE_ERRORS
from nz_core.errors import DatabaseError
from nz_proxy.errors import GatewayError

__all__ = ["DYING_AFTER", "Job", "Step", "Supervisor"]

log = structlog.get_logger("nz_proxy.supervisor")

Step = Callable[[], Awaitable[float]]

FIRST_BACKOFF_S: Final = 0.2
MAX_BACKOFF_S: Final = 5.0
DYING_AFTER: Final = 3
STOP_GRACE_S: Final = 5.0
# Failures of a dependency, not of the job's own code.
DEPENDENCY_ERRORS: Final = (
    *UNREACHABLE_ERRORS,
    RedisError,
    DatabaseError,
    asyncpg.PostgresError,
    GatewayError,
    OSError,
    TimeoutError,
)


@dataclass(slots=True)
class Job:
    """A background job: its name (in logs, metrics and ``/readyz``) and its step.
    ``first_after`` delays the first step; setting ``wake`` ends a wait early. A step
    that only waits for something to happen (a LISTEN session) is ``interruptible``:
    stopping cancels it at once instead of letting it finish."""

    name: str
    step: Step
    first_after: float = 0.0
    wake: asyncio.Event | None = None
    interruptible: bool = False
    crashes_in_a_row: int = 0
    failing: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Runs background jobs until :meth:`stop`; ``on_failure(job, kind)`` hears of every
    failed step, ``kind`` being ``"dependency"`` or ``"crash"`` (for metrics)."""

    def __init__(self, on_failure: Callable[[str, str], None] | None = None) -> None:
        self._jobs: list[Job] = []
        self._on_failure = on_failure or (lambda _job, _kind: None)
        self._stopping = asyncio.Event()

    def start(self, job: Job) -> None:
        job.task = asyncio.create_task(self._run(job), name=f"nz-{job.name}")
        self._jobs.append(job)

    async def _run(self, job: Job) -> None:
        backoff = FIRST_BACKOFF_S
        await self._pause(job, job.first_after)
        while not self._stopping.is_set():
            if await self._step(job):
                backoff = FIRST_BACKOFF_S
                continue
            await self._pause(job, backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _step(self, job: Job) -> bool:
        try:
            pause = await job.step()
        except asyncio.CancelledError:
            raise
        except DEPENDENCY_ERRORS as exc:
            job.crashes_in_a_row = 0
            self._on_failure(job.name, "dependency")
            if not job.failing:
                log.warning("job_failing", job=job.name, error=type(exc).__name__)
            job.failing = True
            return False
        except Exception:
            job.crashes_in_a_row += 1
            job.failing = True
            self._on_failure(job.name, "crash")
            log.exception("job_crashed", job=job.name, crashes_in_a_row=job.crashes_in_a_row)
            return False
        if job.failing:
            log.info("job_recovered", job=job.name)
        job.failing = False
        job.crashes_in_a_row = 0
        await self._pause(job, pause)
        return True

    async def _pause(self, job: Job, seconds: float) -> None:
        """Wait ``seconds``, less if the job is woken or the supervisor stops."""
        if seconds <= 0:
            return
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if job.wake is not None:
            waits.append(asyncio.ensure_future(job.wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    @property
    def dying(self) -> list[str]:
        """Jobs whose last :data:`DYING_AFTER` steps all crashed."""
        return [job.name for job in self._jobs if job.crashes_in_a_row >= DYING_AFTER]

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """End every job: steps in progress finish (within ``grace_s``), waits end now."""
        self._stopping.set()
        for job in self._jobs:
            if job.interruptible and job.task is not None:
                job.task.cancel()
        tasks = [job.task for job in self._jobs if job.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()
