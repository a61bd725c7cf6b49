"""dask.distributed for download and extraction: a LocalCluster, or an existing scheduler."""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import time
from typing import Any, Callable, Iterator

from pipeline.config import ClusterParams
from pipeline.safety import UserError

log = logging.getLogger(__name__)

# schemes whose address is a TCP host:port we can probe before handing it to a Client
_TCP_SCHEMES = ("tcp", "tls", "ws", "wss")
_FIX = ("start it (dask scheduler) or set cluster.scheduler_address: null for a local "
        "cluster")


class ClusterError(UserError):
    """The configured scheduler address is malformed or cannot be reached: one line."""


def check_address(address: str, timeout_s: float = 30.0) -> None:
    """ClusterError unless `address` parses as a dask address with a host and a port and (for
    TCP-based schemes) something accepts a connection there. Probing with a plain socket first
    keeps a dead address to one clean line: a Client that fails half-way prints tracebacks of
    its own when it is collected."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    try:
        scheme, loc = parse_address(address)
        if scheme not in _TCP_SCHEMES:      # inproc, ucx: the Client itself tells
            return
        host, port = parse_host_port(loc)
        if not host:
            raise ValueError("no host")
    except (ValueError, TypeError) as e:
        raise ClusterError(f"cluster.scheduler_address {address!r} is not a scheduler address "
                           f"like tcp://host:8786 ({e}); fix it in params.yaml, or set it to "
                           "null for a local cluster") from None
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:    # refused, unreachable, unknown host, timeout
        raise ClusterError(f"cannot reach the dask scheduler at {address} "
                           f"({e.strerror or e or type(e).__name__}); {_FIX}") from None


@contextlib.contextmanager
def connect(p: ClusterParams, timeout_s: float = 30.0,
            allowed_failures: int | None = None) -> Iterator[Any]:
    """A Client on `p.scheduler_address`, or on a LocalCluster with p.workers x
    p.threads_per_worker threads (closed on exit). Workers of an existing cluster must be able
    to import this project (same code on PYTHONPATH, same working directory layout).

    allowed_failures: how many times a LocalCluster's scheduler re-runs a task whose worker
    died (dask's default is 3: four tries); an exception raised by a task is never re-run."""
    import dask
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.worker", "distributed.scheduler",
                 "distributed.nanny", "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    if p.scheduler_address:
        check_address(p.scheduler_address, timeout_s)
        try:
            client = Client(p.scheduler_address, timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - any failure to join is the address's
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ClusterError(f"cannot reach the dask scheduler at {p.scheduler_address} "
                               f"({first}); {_FIX}") from None
        log.info("joined dask cluster %s (%d workers)", p.scheduler_address,
                 len(client.scheduler_info()["workers"]))
        with client:
            yield client
        return
    # dask's statistical profiler samples every worker thread's stack every 10 ms: it cost
    # extraction's CPU forwards ~20 % (a 120 s video: 100 s whole run against 80 s without);
    # workers started by hand take DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False
    config = {"distributed.worker.profile.enabled": False}
    if allowed_failures is not None:
        config["distributed.scheduler.allowed-failures"] = allowed_failures
    with dask.config.set(config), _own_environ(), \
            LocalCluster(n_workers=p.workers, threads_per_worker=p.threads_per_worker,
                         processes=p.processes, dashboard_address=":0",  # any free port
                         silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        log.info("dask LocalCluster: %d workers x %d threads (dashboard %s)", p.workers,
                 p.threads_per_worker, client.dashboard_link)
        yield client


@contextlib.contextmanager
def _own_environ() -> Iterator[None]:
    """Gives this process its environment back when the LocalCluster closes. A dask nanny
    os.environ.update()s its `pre-spawn-environ` (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_,
    ...) into the process that starts the workers and leaves it there, so every process that
    one starts later, a torch subprocess say, would run on one thread."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)


_MALLOPT = {"M_TRIM_THRESHOLD": (-1, 256 << 20), "M_MMAP_THRESHOLD": (-3, 32 << 20)}


def tune_allocator() -> dict[str, bool]:
    """Lets glibc malloc keep and reuse the large buffers of torch's CPU forwards -> which
    settings took (all False off glibc). Call it in the process that runs the forwards.

    A dask nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536 (dask's
    `distributed.nanny.pre-spawn-environ`, to hand freed memory back to the OS). Setting that
    variable at all also freezes glibc's mmap threshold at 128 KiB, so every activation buffer
    of a forward is a fresh mmap, zero-filled page by page and unmapped again: measured on
    2 cores, ResNet forwards in such a worker took 1.85x as long as in a plain process, and a
    whole extraction 1.57x. Raising both thresholds (mmap to glibc's 32 MiB maximum, trim to
    256 MiB) undoes it, in workers we start and in ones a user started with `dask worker`
    alike; memory then stays at its working-set peak instead of being returned between
    batches (benchmarks/results/extract.md)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (macOS, musl): nothing to undo
        return {k: False for k in _MALLOPT}
    return {k: bool(mallopt(code, value)) for k, (code, value) in _MALLOPT.items()}


def follow(futures: list, events: collections.deque, handle: Callable[[dict], None],
           tick: Callable[[], None] | None = None, poll_s: float = 0.2,
           fail_fast: bool = False) -> list:
    """Waits for `futures` while handing each worker event (appended to `events` by a topic
    subscription) to `handle` as it arrives, and calling `tick` between polls -> the futures'
    results; an exception raised in a task is raised here (with `fail_fast`, as soon as one
    task fails, without waiting for the others)."""
    while True:
        finished = all(f.done() for f in futures)
        failed = fail_fast and any(f.status == "error" for f in futures)
        if failed:
            while events:
                handle(events.popleft())
            next(f for f in futures if f.status == "error").result()   # raises the task's error
        if finished:
            time.sleep(0.3)  # events are batched: let the last ones arrive
        while events:
            handle(events.popleft())
        if tick is not None:
            tick()
        if finished:
            return [f.result() for f in futures]
        time.sleep(poll_s)
