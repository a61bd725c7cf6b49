"""dask.distributed for download and extraction: a LocalCluster, or an existing scheduler."""
from __future__ import annotations

import collections
import contextlib
import logging
import time
from typing import Any, Callable, Iterator

from pipeline.config import ClusterParams

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The configured scheduler cannot be reached."""


@contextlib.contextmanager
def connect(p: ClusterParams, timeout_s: float = 30.0) -> Iterator[Any]:
    """A Client on `p.scheduler_address`, or on a LocalCluster with p.workers x
    p.threads_per_worker threads (closed on exit). Workers of an existing cluster must be able
    to import this project (same code on PYTHONPATH, same working directory layout)."""
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.worker", "distributed.scheduler",
                 "distributed.nanny", "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    if p.scheduler_address:
        try:
            client = Client(p.scheduler_address, timeout=timeout_s)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the dask scheduler at {p.scheduler_address} "
                               f"({e}); start it (dask scheduler) or set "
                               "cluster.scheduler_address: null for a local cluster") from None
        log.info("joined dask cluster %s (%d workers)", p.scheduler_address,
                 len(client.scheduler_info()["workers"]))
        with client:
            yield client
        return
    with LocalCluster(n_workers=p.workers, threads_per_worker=p.threads_per_worker,
                      processes=p.processes, dashboard_address=":0",  # any free port
                      silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        log.info("dask LocalCluster: %d workers x %d threads (dashboard %s)", p.workers,
                 p.threads_per_worker, client.dashboard_link)
        yield client


def follow(futures: list, events: collections.deque, handle: Callable[[dict], None],
           tick: Callable[[], None] | None = None, poll_s: float = 0.2) -> list:
    """Waits for `futures` while handing each worker event (appended to `events` by a topic
    subscription) to `handle` as it arrives, and calling `tick` between polls -> the futures'
    results; an exception raised in a task is raised here."""
    while True:
        finished = all(f.done() for f in futures)
        if finished:
            time.sleep(0.3)  # events are batched: let the last ones arrive
        while events:
            handle(events.popleft())
        if tick is not None:
            tick()
        if finished:
            return [f.result() for f in futures]
        time.sleep(poll_s)
