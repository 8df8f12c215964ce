"""The docs' runnable examples do what the guides say.

``docs/examples/http_503.py`` is started on a free loopback port and driven
with real HTTP requests; the Markdown's ``>>>`` examples run as doctests
(``--doctest-glob='*.md'``), and excerpts the guides quote must still be in
the files they quote.
"""

from __future__ import annotations

import http.client
import importlib.util
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from poolsim import WorkerPool

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "examples" / "http_503.py"


def load_example(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"poolsim_docs_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


http_503 = load_example(EXAMPLE)


def post(port: int, body: bytes, path: str = "/jobs") -> tuple[int, str | None]:
    """POST ``body``; return the status and the Retry-After header (None when absent)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        connection.close()


def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a guard against hangs, not a timing check)."""
    deadline = time.monotonic() + 10.0
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the pool never reached the expected state")
        time.sleep(0.001)


class Served:
    """The example server in a thread, on a 1-worker, 1-place pool whose jobs wait on ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.bodies: list[bytes] = []
        self.pool = WorkerPool(workers=1, queue_size=1, backpressure="reject", name="http")
        self.server = http_503.make_server(self.pool, 0, work=self.work)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def work(self, body: bytes) -> bytes:
        self.bodies.append(body)
        self.gate.wait()
        return body

    def close(self) -> None:
        self.gate.set()  # never leave a job (and so a worker) blocked
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        self.pool.shutdown("drain")


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


def test_server_binds_a_free_loopback_port(served: Served) -> None:
    host, port = served.server.server_address[:2]
    assert (host, port) == ("127.0.0.1", served.port)
    assert port != 0


def test_accepts_until_full_then_503_with_retry_after_then_accepts_again(served: Served) -> None:
    retry_after = str(http_503.RETRY_AFTER_S)
    # capacity = workers + queue_size = 2: two jobs are taken, the next two are shed
    log = [post(served.port, body) for body in (b"a", b"b", b"c", b"d")]
    assert log == [(202, None), (202, None), (503, retry_after), (503, retry_after)]
    assert served.pool.stats().counts["rejected"] == 2
    assert int(retry_after) > 0

    served.gate.set()  # release the blocked jobs; their places come back as they finish
    wait_until(lambda: served.pool.stats().counts["completed"] == 2)
    assert post(served.port, b"e") == (202, None)

    served.pool.shutdown("drain")
    assert post(served.port, b"f") == (503, retry_after)  # PoolClosed: shutting down
    assert served.bodies == [b"a", b"b", b"e"]  # shed requests never ran
    counts = served.pool.stats().counts
    assert (counts["completed"], counts["rejected"]) == (3, 2)  # PoolClosed is not a rejection


def test_unknown_path_is_404_and_submits_nothing(served: Served) -> None:
    assert post(served.port, b"x", path="/nope") == (404, None)
    assert not any(served.pool.stats().counts.values())
    assert served.bodies == []


@pytest.mark.slow
def test_main_drains_and_exits_cleanly_on_sigterm() -> None:
    process = subprocess.Popen([sys.executable, str(EXAMPLE), "0"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)/jobs\n", banner)
        assert match, banner
        assert post(int(match[1]), b"job") == (202, None)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert re.fullmatch(r"stopped: \d+ jobs finished while draining\n", out), out


# -- quoted excerpts --------------------------------------------------------------

EXCERPT = re.compile(r"<!-- excerpt: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)\n```", re.S)


def excerpts() -> list[tuple[str, str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for match in EXCERPT.finditer(page.read_text()):
            found.append((page.relative_to(ROOT).as_posix(), match["path"], match["code"]))
    return found


def test_guides_quote_the_example() -> None:
    quoted = {path for _, path, _ in excerpts()}
    assert "docs/examples/http_503.py" in quoted


@pytest.mark.parametrize(("page", "path", "code"), excerpts())
def test_quoted_excerpts_are_in_the_file_they_quote(page: str, path: str, code: str) -> None:
    source = [line.rstrip() for line in (ROOT / path).read_text().splitlines()]
    missing = [line for line in code.splitlines()
               if line.strip() and line.strip() != "..." and line.rstrip() not in source]
    assert not missing, f"{page} quotes lines that {path} no longer has: {missing}"
