"""gunicorn's settings in a serving image (``--config python:docker_env_serving.gunicorn_config``).

Threaded workers (``gthread``): one process per CPU the container may use, so CPU-bound
predictions run in parallel, each with a few threads for slow clients and keep-alive. Override
with ``WEB_CONCURRENCY`` (workers), ``SERVING_THREADS``, ``SERVING_TIMEOUT``, or any gunicorn
flag in ``GUNICORN_CMD_ARGS``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def cpu_limit() -> int:
    """The CPUs this container may use: its CPU set, capped by a CFS quota (``--cpus``)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota: float | None = None
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()  # cgroup v2
        if text and text[0] != "max":
            quota = int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        try:  # cgroup v1
            us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if us > 0:
                quota = us / period
        except (OSError, ValueError):
            pass
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


bind = [f"0.0.0.0:{_int('SERVING_PORT', 8080)}"]
workers = _int("WEB_CONCURRENCY", cpu_limit())
# /readyz speaks for all workers: each marks itself here once its model is loaded.
os.environ["SERVING_WORKERS"] = str(workers)
os.environ.setdefault("SERVING_READY_DIR", "/dev/shm/serving-ready")
worker_class = "gthread"
threads = _int("SERVING_THREADS", 4)
timeout = _int("SERVING_TIMEOUT", 60)
graceful_timeout = 20
keepalive = 5
# Heartbeat files in memory: the image's file system may be read-only.
worker_tmp_dir = "/dev/shm"
accesslog = "-"
control_socket_disable = True  # gunicorn 24+'s management socket: nothing uses it here
errorlog = "-"
loglevel = os.environ.get("SERVING_LOG_LEVEL", "info")


def post_worker_init(worker: Any) -> None:
    """Start loading the model once the worker runs (not in the arbiter: threads do not fork)."""
    start = getattr(worker.wsgi, "start", None)
    if callable(start):
        start()
