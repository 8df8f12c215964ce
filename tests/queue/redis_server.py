"""Real ``redis-server`` processes for the tests: one on a free loopback port with its own
temporary directory, optionally with an append-only file (``appendfsync always``) so it
can be SIGKILLed and restarted on the same port and data; and a three-node cluster.

No test talks to the machine's own Redis: a fresh machine only needs the binary. Without
it the Redis tests are skipped, unless ``POOLSIM_REQUIRE_REDIS=1`` (CI), which fails them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
START_TIMEOUT_S = 10.0


def require_redis() -> str:
    """The ``redis-server`` binary's path; skips the test without one (fails under
    ``POOLSIM_REQUIRE_REDIS=1``)."""
    if REDIS_SERVER is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("POOLSIM_REQUIRE_REDIS") == "1":
            pytest.fail(f"POOLSIM_REQUIRE_REDIS=1 but {message}")
        pytest.skip(message)
    return REDIS_SERVER


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_port() -> int:
    """A free port a cluster node can use: its bus listens on port + 10000, so at most 55535."""
    while (port := free_port()) > 65535 - 10000:
        pass
    return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` on ``127.0.0.1:port`` keeping its files in ``dir``.

    ``aof=True`` turns on the append-only file with an fsync per write (``appendfsync
    always``): every acknowledged write survives :meth:`kill`. ``extra`` adds config
    arguments (``["--requirepass", "secret"]``)."""

    def __init__(self, dir: Path, *, aof: bool = False, extra: list[str] | None = None,
                 port: int | None = None) -> None:
        self.dir = dir
        self.port = port or free_port()
        self.aof = aof
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None
        dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:port/0`` (no password: add one with ``extra``)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        args = [require_redis(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"),
                "--appendonly", "yes" if self.aof else "no", *self.extra]
        if self.aof:
            args += ["--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ping(self.port) and not self._answers_auth():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:] \
                    if (self.dir / "redis.log").exists() else ""
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        return self

    def _answers_auth(self) -> bool:
        """With ``--requirepass`` PING answers ``-NOAUTH``: still up."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"-NOAUTH")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save) and wait for it to die."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Terminate the server if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def redis_server(dir: Path, **options: object) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped on exit."""
    server = RedisServer(dir, **options)  # type: ignore[arg-type]
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def redis_cluster(dir: Path, nodes: int = 3) -> Iterator[list[RedisServer]]:
    """``nodes`` masters on loopback ports joined into one cluster (no replicas), stopped
    on exit; the cluster's state is ``ok`` (every slot served) when this yields."""
    servers = [RedisServer(dir / f"node{i}",
                           extra=["--cluster-enabled", "yes",
                                  "--cluster-config-file", str(dir / f"node{i}" / "nodes.conf"),
                                  "--cluster-node-timeout", "5000"],
                           port=cluster_port())
               for i in range(nodes)]
    try:
        for server in servers:
            server.start()
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is missing (it comes with redis-server)")
        subprocess.run([REDIS_CLI, "--cluster", "create",
                        *(f"127.0.0.1:{s.port}" for s in servers),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while True:
            states = [subprocess.run([REDIS_CLI, "-p", str(s.port), "cluster", "info"],
                                     capture_output=True, text=True, timeout=10).stdout
                      for s in servers]
            if all("cluster_state:ok" in info for info in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not become ok: {states}")
            time.sleep(0.1)
        yield servers
    finally:
        for server in servers:
            server.stop()
