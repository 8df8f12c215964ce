"""Redis under real faults: SIGKILLed with ``appendfsync always`` mid-burst, and gone
for a while under a running server. Each test starts its own ``redis-server`` with an
append-only file in its temporary directory and restarts it on the same port and data."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from poolsim.errors import BackendUnavailable
from poolsim.queue import Client, Server, State, Task
from poolsim.queue.backends.base import open_backend
from tests.queue.conftest import wait_until
from tests.queue.redis_server import RedisServer

pytestmark = pytest.mark.slow

# Enqueues until the store goes away, writing the id of every enqueue that returned (and
# flushing it) before the next; exits 3 on BackendUnavailable.
ENQUEUER = """
import sys
from poolsim.errors import BackendUnavailable
from poolsim.queue import Client, Task

url, log_path = sys.argv[1:3]
log = open(log_path, "a", buffering=1)
client = Client(url)
n = 0
try:
    while True:
        info = client.enqueue(Task("t", {"n": n}))
        log.write(info.id + "\\n")
        n += 1
except BackendUnavailable as exc:
    print(exc, flush=True)
    sys.exit(3)
"""


@pytest.mark.timeout(120)
def test_every_acknowledged_enqueue_survives_a_sigkill_of_redis(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", aof=True).start()
    url, log = f"{redis.url}?timeout=2", tmp_path / "acked.log"
    try:
        enqueuer = subprocess.Popen([sys.executable, "-c", ENQUEUER, url, str(log)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: log.exists() and log.read_text().count("\n") >= 300)
        redis.kill()  # mid-burst: the enqueuer is between two enqueues, or inside one
        out, err = enqueuer.communicate(timeout=60)
        assert enqueuer.returncode == 3, err.decode()
        assert b"BackendUnavailable" in out or b"unavailable" in out.lower(), out
        redis.start()  # the same port and directory: Redis replays its append-only file
        acked = log.read_text().split()
        store = open_backend(url)
        try:
            states = Counter(store.get(task_id).state for task_id in acked)
        finally:
            store.close()
        assert states == {State.PENDING: len(acked)}
        assert len(acked) >= 300
    finally:
        redis.stop()


@pytest.mark.timeout(120)
def test_a_server_rides_out_a_redis_outage(tmp_path: Path) -> None:
    """Redis is SIGKILLed while four handlers run and restarted two seconds later: the
    client's enqueue raises BackendUnavailable meanwhile; the server keeps its running
    handlers, acknowledges their outcomes once Redis is back, and drains the rest — every
    task completed exactly once, no lease lost (the outage is shorter than the lease)."""
    redis = RedisServer(tmp_path / "redis", aof=True).start()
    url = f"{redis.url}?timeout=0.5"
    with Client(url) as client:
        for n in range(12):
            client.enqueue(Task("t", {"n": n}), task_id=f"task-{n}")
    running, release = threading.Semaphore(0), threading.Event()
    server = Server(url, concurrency=4, prefetch=0, lease_s=10, poll_interval=0.05,
                    recover_interval=0.2, shutdown_timeout=5)

    @server.handler("t")
    def handler(task: Task) -> None:
        running.release()
        release.wait(30)

    server.start()
    try:
        for _ in range(4):
            assert running.acquire(timeout=30)
        redis.kill()
        with Client(url) as client, pytest.raises(BackendUnavailable) as refused:
            client.enqueue(Task("t", {"n": 99}))
        assert redis.url.split("/")[2] in str(refused.value)
        release.set()  # the four finish while Redis is down
        time.sleep(2.0)  # the server's loops fail meanwhile, and keep retrying
        redis.start()
        store = open_backend(url)
        try:
            wait_until(lambda: len([r for r in store.history() if r.status == "completed"])
                     == 12)
            rows = store.history()
            stats = server.statistics()
        finally:
            store.close()
    finally:
        release.set()
        server.stop()
        redis.stop()
    assert Counter(row.task_id for row in rows) == {f"task-{n}": 1 for n in range(12)}
    assert stats.leases_lost == 0
