"""gunicorn settings for the key server: `gunicorn -c python:keyserver.gunicorn_conf ...`, as
deploy/keyserver/keyserver.service and bench/keyserver.py run it (a module, so the same settings load
wherever the package is installed).

Each worker process is pinned to one CPU (docs/performance.md, "Key server"). A worker's threads share one
interpreter lock, so the process runs Python on one core at a time anyway; left free, the scheduler wakes
its threads on whichever core is idle and the lock keeps changing hands across cores — on a VM each such
wake-up is an inter-processor interrupt. Pinned, a woken thread waits on the same core until the running one
blocks: on the 2-core development VM the context switches per request fell from ~17-25 to ~1-12, the no-op
answered ~50 % more requests and key releases 20-50 % more. Workers are spread over the CPUs the service may
use (systemd CPUAffinity=, taskset), one per CPU before any CPU gets a second; a restarted worker takes the
CPU its predecessor left. KEYSERVER_PIN_WORKERS=0 turns it off.
"""

from __future__ import annotations

import os
from typing import Any


def _pinning() -> bool:
    return os.environ.get("KEYSERVER_PIN_WORKERS", "1") != "0" and hasattr(os, "sched_setaffinity")


def pre_fork(server: Any, worker: Any) -> None:
    """In the master: choose the CPU with the fewest live workers for the worker about to start."""
    if not _pinning():
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    load = dict.fromkeys(cpus, 0)
    for other in server.WORKERS.values():
        cpu = getattr(other, "keyserver_cpu", None)
        if cpu in load:
            load[cpu] += 1
    worker.keyserver_cpu = min(cpus, key=lambda cpu: (load[cpu], cpu))


def post_fork(server: Any, worker: Any) -> None:
    """In the new worker, before it starts any thread (threads inherit the affinity)."""
    cpu = getattr(worker, "keyserver_cpu", None)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
        server.log.info("worker %s pinned to CPU %s", worker.pid, cpu)
