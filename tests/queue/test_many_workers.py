"""Several worker processes — separate interpreters, as on separate hosts — drain one
queue store together, and weighted queues hold their shares across processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from poolsim.queue import Client, Task
from poolsim.queue.backends.base import open_backend

pytestmark = pytest.mark.slow

WEIGHTS = {"critical": 6, "default": 3, "low": 1}

# One worker "host": a Server with the weights; each handler takes a few ms, so the
# processes' claims interleave. It starts running when told "go" on stdin, so that no
# process drains the queue while another is still importing.
WORKER = """
import sys, time
from poolsim.queue import Server

url, seed = sys.argv[1], int(sys.argv[2])
server = Server(url, concurrency=2, queues={"critical": 6, "default": 3, "low": 1},
                poll_interval=0.01, seed=seed, shutdown_timeout=5)

@server.handler("t")
def handler(task):
    time.sleep(0.005)

print("ready", flush=True)
sys.stdin.readline()
server.run()
"""


@pytest.mark.timeout(180)
def test_worker_processes_share_one_queue_by_weight(queue_url: str) -> None:
    """Three worker processes, 700 tasks in each queue: of the first 600 attempts, the
    queues' shares are within 0.06 of 0.6 / 0.3 / 0.1 (about 3 binomial standard
    deviations), every process did part of the work, and no task completed twice."""
    with Client(queue_url) as client:
        for queue in reversed(list(WEIGHTS)):  # low's tasks are the oldest
            for _ in range(700):
                client.enqueue(Task("t", {}), queue=queue)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, queue_url, str(seed)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
               for seed in range(3)]
    store = open_backend(queue_url)
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == b"ready"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            worker.stdin.flush()
        deadline = time.monotonic() + 120
        while len(store.history()) < 600 and time.monotonic() < deadline:  # no hand-backs yet
            time.sleep(0.1)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [worker.wait(30) for worker in workers]
    history = store.history()
    store.close()
    assert codes == [0, 0, 0]
    # At SIGTERM each server hands back what it had claimed but not started ("returned").
    assert {row.status for row in history} <= {"completed", "returned"}
    rows = sorted((row for row in history if row.status == "completed"),
                  key=lambda row: row.ended_at)
    assert len(rows) >= 600
    first = rows[:600]
    shares = {queue: n / 600 for queue, n in Counter(row.queue for row in first).items()}
    for queue, weight in WEIGHTS.items():
        assert abs(shares.get(queue, 0.0) - weight / 10) < 0.06, shares
    by_process = Counter(row.worker.split(":")[-2] for row in rows if row.worker)
    assert len(by_process) == 3, by_process
    assert Counter(row.task_id for row in rows).most_common(1)[0][1] == 1
