"""The HSM pool's bookkeeping (``rsign.hsm.pool``): a job, a worker's slot with the jobs in its
pipe, and the pool's statistics."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rsign.hsm.pool_worker import Worker

# Jobs queued in each worker's pipe.
PIPELINE_DEPTH = 2


@dataclass
class Job:
    op: str
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)


class Slot:
    """One worker and the jobs written to its pipe, oldest first."""

    def __init__(self, worker: Worker) -> None:
        self.worker: Worker | None = worker
        self.pending: deque[Job] = deque()
        self.lock = threading.Lock()
        self.cv = threading.Condition(self.lock)
        self.room = threading.Semaphore(PIPELINE_DEPTH)
        self.stopping = False
        # A caller's thread is using the worker itself (HsmPool._direct): the sender writes
        # nothing meanwhile, so that the one answer in the pipe is the caller's.
        self.direct = False
        self.direct_jobs = 0  # how many (a metric)
        # The sender holds a job for this worker and waits for the direct caller to finish: no
        # further direct call takes the worker first (a stream of them would starve the job).
        self.claimed = False

    def free(self) -> bool:
        """No caller's thread is using the worker (read under ``lock``)."""
        return not self.direct


@dataclass(frozen=True)
class PoolStats:
    """What the pool is doing right now (read by the metrics endpoint)."""

    workers: int  # configured
    alive: int  # worker processes running
    busy: int  # workers holding at least one job
    in_flight: int  # jobs written to workers' pipes, not answered yet
    queued: int  # jobs waiting for a worker (the shared queue)
    restarts: int  # workers replaced since start (crashed, killed or timed out)
    direct: int = 0  # jobs run by the calling thread on an idle worker, skipping the queue
