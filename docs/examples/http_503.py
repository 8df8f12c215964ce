"""An HTTP endpoint that sheds load: 202 when the pool takes the job, 503 when it is full.

``POST /jobs`` hands the request body to a :class:`poolsim.WorkerPool` with the
``reject`` policy and a small queue. When the pool has no room it answers
``503 Service Unavailable`` with a ``Retry-After`` header at once, instead of
queueing without bound; when the pool is shutting down it answers 503 too.

Run it, then send work with ``curl -X POST --data hello http://127.0.0.1:8000/jobs``::

    python docs/examples/http_503.py [PORT]

SIGTERM or Ctrl-C drains the pool (new requests get 503) and then stops the server.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from poolsim import PoolClosed, QueueFull, WorkerPool, install_signal_handlers

RETRY_AFTER_S = 1  # what a client should wait before trying again: about one job's duration


def process(body: bytes) -> int:
    """Stand-in for real work (resize an image, send an email...)."""
    time.sleep(0.5)
    return len(body)


def make_server(pool: WorkerPool, port: int = 0, *,
                work: Callable[[bytes], object] = process) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:``port`` (0 picks a free one) that runs ``work(body)`` on ``pool``."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/jobs":
                self.reply(404, "no such endpoint\n")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                pool.submit(work, body, task_type="http")
            except QueueFull:  # back-pressure: tell the client to come back later
                self.reply(503, "busy, retry later\n", {"Retry-After": str(RETRY_AFTER_S)})
            except PoolClosed:  # shutting down: another replica should take it
                self.reply(503, "shutting down\n", {"Retry-After": str(RETRY_AFTER_S)})
            else:
                self.reply(202, "accepted\n")

        def reply(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
            data = text.encode()
            self.send_response(code)
            for name, value in {"Content-Type": "text/plain", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def main(port: int = 8000) -> None:
    pool = WorkerPool(workers=4, queue_size=8, backpressure="reject",
                      shutdown="drain", shutdown_timeout=20.0)
    stop = install_signal_handlers(pool)  # SIGTERM/SIGINT start pool.shutdown()
    server = make_server(pool, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on http://127.0.0.1:{server.server_port}/jobs", flush=True)
    report = stop.wait()  # until a signal arrives and the drain ends
    server.shutdown()
    finished = len(report.completed) if report else 0
    print(f"stopped: {finished} jobs finished while draining", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
