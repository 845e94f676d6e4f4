"""A fixed number of POSTs to a serving image's /predict with locust, from N concurrent clients.

    .venv/bin/python benchmarks/serving_load.py URL --users 8 --requests 2000 --body '{"x": 1}'

Prints one JSON object: requests, failures, seconds, requests/s, p50 and p99 in milliseconds.
Locust (``pip install -e '.[bench]'``) drives the load (FastHttpUser, keep-alive, no think
time); latencies are taken from its request events unrounded, since its own statistics round
them to whole milliseconds. Run by benchmarks/serving.py; separate because locust monkey-patches
the standard library on import (gevent), which must happen before anything else opens sockets.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

import gevent
from locust import FastHttpUser, constant, task
from locust.env import Environment
from locust.exception import StopUser


def load(url: str, users: int, requests: int, body: str) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    quota = [requests // users + (1 if i < requests % users else 0) for i in range(users)]

    class Client(FastHttpUser):
        host = url
        wait_time = constant(0)

        def on_start(self) -> None:
            self.left = quota.pop()

        @task
        def predict(self) -> None:
            if self.left <= 0:
                raise StopUser()
            self.left -= 1
            with self.client.post(
                "/predict",
                data=body,
                headers={"Content-Type": "application/json"},
                catch_response=True,
            ) as resp:
                if resp.status_code != 200:
                    resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    def on_request(response_time: float, exception: Exception | None, **_: Any) -> None:
        if exception is None:
            latencies.append(response_time)
        else:
            failures.append(str(exception))

    logging.getLogger("locust").setLevel(logging.ERROR)  # it warns about spawning all at once
    env = Environment(user_classes=[Client])
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    started = time.perf_counter()
    runner.start(users, spawn_rate=10_000)
    while len(latencies) + len(failures) < requests:
        if time.perf_counter() - started > 600:
            break
        gevent.sleep(0.01)
    seconds = time.perf_counter() - started
    runner.quit()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if latencies else [0.0] * 99
    return {
        "users": users,
        "requests": len(latencies),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "seconds": round(seconds, 3),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(cuts[49], 2),
        "p99_ms": round(cuts[98], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("url")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--body", required=True)
    args = parser.parse_args()
    print(json.dumps(load(args.url, args.users, args.requests, args.body)))


if __name__ == "__main__":
    main()
