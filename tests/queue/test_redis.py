"""What only the Redis store promises: its URL, key prefixes and hash tags, passwords that
never leak, TLS, Redis Cluster, unreachable servers, scripts the server forgot, and forks.
Every test talks to a real ``redis-server`` (no mocks); the shared semantics are in
test_backend_contract.py."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import string
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import assume as hypothesis_assume
from hypothesis import strategies as st
from redis.crc import key_slot

from poolsim.errors import BackendUnavailable, ConfigError, TaskAlreadyExists, TaskNotFound
from poolsim.queue.backends import redis as redis_backend
from poolsim.queue.backends.base import Outcome, open_backend, redact_url
from poolsim.queue.backends.redis import RedisBackend, parse_url
from poolsim.queue.task import State
from tests.queue.conftest import T0, make_task, tasks_in
from tests.queue.redis_server import (
    START_TIMEOUT_S,
    RedisServer,
    free_port,
    redis_cluster,
    redis_server,
    require_redis,
)

W1 = "host:1:aaa"
DONE = Outcome(state=State.COMPLETED, status="completed")
SECRET = "s3cret-Pa55word"


@pytest.fixture
def server(redis_session: RedisServer) -> RedisServer:
    """The session's server, flushed."""
    with redis.Redis(port=redis_session.port) as client:
        client.flushall()
    return redis_session


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the session's server, to look at the keys."""
    with redis.Redis(port=server.port, decode_responses=True) as client:
        yield client


@contextlib.contextmanager
def store(url: str, **options: float) -> Iterator[RedisBackend]:
    backend = RedisBackend(url, **options)
    try:
        yield backend
    finally:
        backend.close()


def run_one(backend: RedisBackend, queue: str = "default", **fields: object) -> str:
    """Enqueue, claim and complete one task of ``queue``; its id."""
    task = backend.enqueue(make_task(queue=queue, **fields), now=T0)  # type: ignore[arg-type]
    [info] = backend.claim([queue], worker=W1, now=T0, lease_s=30, limit=1)
    assert info.id == task.id
    assert backend.finish(task.id, worker=W1, now=T0 + 1, outcome=DONE, lease=info.lease)
    return task.id


# -- the URL ----------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0",
     dict(host="127.0.0.1", port=6379, db=0, username=None, password=None, tls=False,
          prefix="poolsim", timeout=5.0, history_retention=7 * 86400.0, cluster=False)),
    ("redis://localhost", dict(host="localhost", port=6379, db=0)),
    ("redis://:pw@h:1/3?prefix=app1&timeout=0.5&history_retention=inf",
     dict(host="h", port=1, db=3, username=None, password="pw", prefix="app1", timeout=0.5,
          history_retention=float("inf"))),
    ("redis://me:p%40ss@h:2/0?cluster=1", dict(username="me", password="p@ss", cluster=True)),
    ("rediss://h:6380/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=0",
     dict(tls=True, ssl={"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required",
                         "ssl_check_hostname": False})),
])
def test_url(url: str, expected: dict[str, object]) -> None:
    parsed = parse_url(url)
    assert {k: getattr(parsed, k) for k in expected} == expected


@pytest.mark.parametrize(("url", "field", "named"), [
    ("http://h:1/0", "url", "redis://"),
    ("redis://h:1/0?pool=3", "url", "pool"),
    ("redis://h:1/0?prefix=a&colour=red", "url", "colour"),
    ("redis://h:port/0", "url", "port"),
    ("redis://h:1/zero", "db", "database"),
    ("redis://h:1/1?cluster=1", "db", "cluster"),
    ("redis://h:1/0?cluster=maybe", "cluster", "1 or 0"),
    ("redis://h:1/0?prefix=", "prefix", "braces"),
    ("redis://h:1/0?prefix={app}", "prefix", "braces"),
    ("redis://h:1/0?timeout=0", "timeout", "seconds"),
    ("redis://h:1/0?timeout=soon", "timeout", "seconds"),
    ("redis://h:1/0?timeout=inf", "timeout", "seconds"),
    ("redis://h:1/0?history_retention=-1", "history_retention", "inf"),
    ("redis://h:1/0?history_retention=nan", "history_retention", "inf"),
    ("redis://h:1/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs", "rediss://"),
    ("rediss://h:1/0?ssl_cert_reqs=always", "ssl_cert_reqs", "required"),
    ("rediss://h:1/0?ssl_password=x", "url", "ssl_password"),
])
def test_a_bad_url_names_what_is_wrong(url: str, field: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_backend(url)
    assert caught.value.field == field
    assert named in str(caught.value)


def test_history_retention_argument_wins_over_the_url() -> None:
    with store("redis://h:1/0?history_retention=60") as backend:
        assert backend.history_retention == 60
    with store("redis://h:1/0?history_retention=60", history_retention=3600) as backend:
        assert backend.history_retention == 3600
    for bad in (0, -1, float("nan"), True):
        with pytest.raises(ConfigError) as caught:
            RedisBackend("redis://h:1/0", history_retention=bad)
        assert caught.value.field == "history_retention"


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://:{SECRET}@h:1/0", "redis://:***@h:1/0"),
    (f"redis://me:{SECRET}@h:1/0?prefix=a", "redis://me:***@h:1/0?prefix=a"),
    (f"rediss://me:{SECRET}@[::1]:1/0", "rediss://me:***@[::1]:1/0"),
    ("redis://h:1/0", "redis://h:1/0"),
    ("redis://me@h:1/0", "redis://me@h:1/0"),
    (f"redis://:{SECRET}@[::1/0", "redis://:***@[::1/0"),  # unparseable all the same
    # unencoded / # ? @ : in a password: urllib would split there, the redaction does not
    ("redis://:pa/ss@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://:abc#def@h/0", "redis://:***@h/0"),
    ("redis://:1234/5678@host", "redis://:***@host"),
    ("redis://me:a?b@c:d@h:1/0?prefix=x", "redis://me:***@h:1/0?prefix=x"),
    ("redis://h/0?x=a:secret@b", "redis://***@b"),  # ambiguous: hidden up to the last @
    ("redis://h:1/0?password=pw&prefix=a#f", "redis://h:1/0?password=***&prefix=a#f"),
    (f"Redis://:{SECRET}@h/0", "Redis://:***@h/0"),
    (f"me:{SECRET}@h:1", "me:***@h:1"),  # no scheme
    ("sqlite:////srv/me@host/jobs.db?timeout=5", "sqlite:////srv/me@host/jobs.db?timeout=5"),
    ("sqlite:///jobs.db", "sqlite:///jobs.db"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redis_backend.redact_url is redact_url  # moved to base.py, still importable


@pytest.mark.parametrize(("url", "password"), [
    ("redis://:pa/ss@host:6379/0", "pa/ss"), ("redis://:abc#def@h/0", "abc#def"),
    ("redis://:1234/5678@host", "1234/5678"), ("redis://u:p@s?s:x@h:2/3", "p@s?s:x"),
    ("redis://:p%2Fss@h/0", "p/ss"),
])
def test_a_password_may_hold_url_delimiters(url: str, password: str) -> None:
    parsed = parse_url(url)
    assert parsed.password == password
    assert parsed.host in ("host", "h") and password not in parsed.redacted


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}@h:1/0?colour=red", f"redis://:{SECRET}@h:port/0",
    f"redis://u:{SECRET}@h:1/0?timeout=-1", f"redis://:{SECRET}@h:1/0?ssl_keyfile=k",
])
def test_a_bad_url_never_shows_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RedisBackend(url)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert SECRET not in repr(caught.value.value)


def test_open_backend_never_shows_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as caught:
        open_backend(f"Redis://:{SECRET}@h/0")  # not a scheme poolsim knows
    assert SECRET not in str(caught.value) and caught.value.value == "Redis://:***@h/0"
    monkeypatch.setitem(sys.modules, "poolsim.queue.backends.redis", None)  # no redis-py
    with pytest.raises(ConfigError) as caught:
        open_backend(f"redis://me:{SECRET}@h/0")
    assert SECRET not in str(caught.value) and caught.value.value == "redis://me:***@h/0"


PRINTABLE = st.text(st.sampled_from(string.ascii_letters + string.digits + string.punctuation
                                    + " "), min_size=4, max_size=24)
REFUSED_PORT = free_port()  # nothing listens there: enqueue fails at once


@settings(max_examples=200, deadline=None)
@given(password=PRINTABLE | st.sampled_from(["pa/ss", "ab#cd", "12/34", "a?b=c", "a@b:c",
                                             "%2F%40x", "a:b/c", "s/1@x?y#z"]),
       user=st.sampled_from(["", "me"]),
       tail=st.sampled_from(["/0?timeout=0.2", "/0?timeout=0.2&colour=red", "/zero",
                             ":port/0", "/1?cluster=1", "/0?password={pw}", "/0?prefix={{x}}",
                             "/0?timeout=0.2#frag", "", "/0?ssl_keyfile=k"]),
       scheme=st.sampled_from(["redis", "rediss", "Redis", "http"]))
def test_no_message_ever_shows_a_password(password: str, user: str, tail: str,
                                          scheme: str) -> None:
    encoded = urllib.parse.quote(password, safe="")  # as a query's value must be
    url = f"{scheme}://{user}:{password}@127.0.0.1:{REFUSED_PORT}{tail.format(pw=encoded)}"
    if tail == ":port/0":
        url = f"{scheme}://{user}:{password}@127.0.0.1:port/0"
    secrets = {password, encoded}
    hypothesis_assume(not any(s in url.replace(password, "***").replace(encoded, "***")
                              for s in secrets))
    shown: list[str] = [redact_url(url)]
    for attempt in (parse_url, open_backend):
        try:
            result = attempt(url)
        except ConfigError as exc:
            shown += [str(exc), repr(exc), repr(exc.value)]
            continue
        shown += [repr(result)]
        if isinstance(result, RedisBackend):
            shown += [result.url, repr(vars(result))]
            try:
                result.enqueue(make_task(), now=T0)
            except BackendUnavailable as exc:
                shown += [str(exc), repr(exc), exc.url, exc.reason]
            finally:
                result.close()
    for text in shown:
        assert not any(secret in text for secret in secrets)


def test_the_backend_never_shows_its_password() -> None:
    url = f"redis://me:{SECRET}@127.0.0.1:1/0?prefix=app"
    with store(url) as backend:
        assert backend.url == "redis://me:***@127.0.0.1:1/0?prefix=app"
        for text in (str(backend), repr(backend), repr(parse_url(url)), repr(vars(backend))):
            assert SECRET not in text


# -- keys: prefixes and hash tags -------------------------------------------------------

def test_each_application_sees_only_its_own_prefix(server: RedisServer,
                                                   raw: redis.Redis) -> None:
    with store(server.url + "?prefix=app1") as app1, store(server.url + "?prefix=app2") as app2:
        mine = run_one(app1, retention=60)
        app1.enqueue(make_task(unique_key="k", unique_until=T0 + 60), now=T0)
        app2.enqueue(make_task(unique_key="k", unique_until=T0 + 60), now=T0)  # no clash
        app1.pause("low", True)
        assert [s.queue for s in app2.stats(now=T0)] == ["default"]
        assert app2.list_tasks(state=State.COMPLETED) == []
        assert app2.history() == []
        assert app2.claim(["low", "default"], worker=W1, now=T0, lease_s=30, limit=5)
        with pytest.raises(TaskNotFound):
            app2.get(mine)
        assert app2.recover(now=T0 + 100) == 1 and app1.recover(now=T0 + 100) == 0
        assert [h.task_id for h in app1.history()] == [mine]
        assert {k.split(":")[0] for k in raw.scan_iter()} == {"app1", "app2"}
    with store(server.url) as default:
        run_one(default)
        assert {k.split(":")[0] for k in raw.scan_iter()} == {"app1", "app2", "poolsim"}


def hash_tag(key: str) -> str:
    """What Redis hashes for ``key``: the text between the first ``{`` and the next ``}``."""
    start = key.index("{")
    return key[start + 1:key.index("}", start + 1)]


QUEUE_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["", "{", "}", "{}", "a:b", "a%3Ab", "%", "%%", "{a}:b", "a}{b", "t:x", "u:x", ":"])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(queues=st.lists(QUEUE_NAMES, min_size=1, max_size=4, unique=True))
def test_a_queue_lives_in_one_slot_and_never_meets_another(server: RedisServer,
                                                           raw: redis.Redis,
                                                           queues: list[str]) -> None:
    raw.flushall()
    with store(server.url) as backend:
        ids = {q: backend.enqueue(make_task(queue=q, unique_key="k", unique_until=T0 + 60),
                                  now=T0).id for q in queues}  # one key, a lock per queue
        later = {q: backend.enqueue(make_task(queue=q, process_at=T0 + 10), now=T0).id
                 for q in queues}
        for q in queues:
            backend.pause(q, False)
        claimed = backend.claim(queues, worker=W1, now=T0, lease_s=30, limit=100)
        assert [t.queue for t in claimed] == queues
        assert backend.finish_many([(t.id, DONE) for t in claimed], worker=W1, now=T0 + 1,
                                   leases=[str(t.lease) for t in claimed]) == [True] * len(queues)
        backend.forward(now=T0 + 10)
        for q in queues:
            assert tasks_in(backend, State.PENDING, q) == [later[q]]
            assert backend.get(later[q]).queue == q
            assert [h.task_id for h in backend.history() if h.queue == q] == [ids[q]]
        assert sorted(s.queue for s in backend.stats(now=T0)) == sorted(queues)
        tags: dict[str, set[int]] = {}
        for key in raw.keys(f"{backend.prefix}:*"):
            if key != f"{backend.prefix}:queues":
                tags.setdefault(hash_tag(key), set()).add(key_slot(key.encode()))
        assert len(tags) == len(queues)  # one tag per queue: no two queues share keys
        assert all(len(slots) == 1 for slots in tags.values())


# -- passwords --------------------------------------------------------------------------

def test_a_password_in_the_url(tmp_path: Path) -> None:
    with redis_server(tmp_path, extra=["--requirepass", SECRET]) as locked:
        with store(f"redis://:{SECRET}@127.0.0.1:{locked.port}/0") as backend:
            run_one(backend)
            assert [h.status for h in backend.history()] == ["completed"]
        for url in (f"redis://:wrong-{SECRET[:4]}@127.0.0.1:{locked.port}/0",
                    f"redis://default:not-it@127.0.0.1:{locked.port}/0",
                    f"redis://127.0.0.1:{locked.port}/0"):
            with store(url) as backend, pytest.raises(BackendUnavailable) as caught:
                backend.enqueue(make_task(), now=T0)
            error = caught.value
            assert "authentication failed" in str(error)
            assert error.url == backend.url == redact_url(url)
            for text in (str(error), repr(error), error.url, error.reason, repr(backend)):
                assert SECRET not in text and "wrong-" not in text and "not-it" not in text


def test_an_acl_user_limited_to_its_prefix(tmp_path: Path) -> None:
    """The threat model's advice works as written: a Redis ACL user allowed only the keys
    ``~billing:*`` and the command categories it names runs the queue under
    ``?prefix=billing``, and is refused everything under another prefix."""
    acl = ["--user", "billing", "on", f">{SECRET}", "~billing:*", "+@read", "+@write",
           "+@scripting", "+ping", "+info", "--user", "default", "off"]
    with redis_server(tmp_path, extra=acl) as locked:
        url = f"redis://billing:{SECRET}@127.0.0.1:{locked.port}/0"
        with store(f"{url}?prefix=billing") as backend:
            run_one(backend)
            assert [h.status for h in backend.history()] == ["completed"]
            assert backend.stats(now=T0)[0].processed_today == 1
        with store(f"{url}?prefix=shipping") as backend, \
                pytest.raises(BackendUnavailable, match="no permissions"):
            backend.enqueue(make_task(), now=T0)


# -- an unreachable server --------------------------------------------------------------

def test_an_unreachable_server_is_backend_unavailable() -> None:
    url = f"redis://me:{SECRET}@127.0.0.1:{free_port()}/0?timeout=0.5"
    with store(url) as backend:
        with pytest.raises(BackendUnavailable) as caught:
            backend.enqueue(make_task(), now=T0)
        assert caught.value.url == redact_url(url) == backend.url
        assert "***" in caught.value.url and SECRET not in str(caught.value)
        with pytest.raises(BackendUnavailable):
            backend.claim(["default"], worker=W1, now=T0, lease_s=30, limit=1)


def test_a_busy_server_is_backend_unavailable(tmp_path: Path) -> None:
    """A script running past ``busy-reply-threshold`` makes Redis answer ``BUSY`` to
    everyone else: transient, so ``BackendUnavailable`` (the acker retries it)."""
    with redis_server(tmp_path, extra=["--busy-reply-threshold", "10"]) as busy, \
            redis.Redis(port=busy.port, decode_responses=True) as admin, \
            store(busy.url) as backend:
        run_one(backend)

        def spin() -> None:
            with redis.Redis(port=busy.port) as looper, \
                    contextlib.suppress(redis.ResponseError):
                looper.eval("while true do end", 0)  # until SCRIPT KILL

        thread = threading.Thread(target=spin, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:  # until the server answers BUSY
                try:
                    admin.ping()
                except redis.ResponseError as exc:
                    assert str(exc).startswith("BUSY")
                    break
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(BackendUnavailable, match="BUSY"):
                backend.stats(now=T0)
            with pytest.raises(BackendUnavailable, match="BUSY"):
                backend.finish_many([("x", DONE)], worker=W1, now=T0, leases=["default/x:1"])
        finally:
            while thread.is_alive():
                with contextlib.suppress(redis.ResponseError):
                    admin.script_kill()
                thread.join(0.1)
        assert [s.processed_today for s in backend.stats(now=T0)] == [1]


def test_a_replica_without_its_master_is_backend_unavailable(tmp_path: Path) -> None:
    """``MASTERDOWN`` (a stale replica that will not serve) is transient too."""
    with redis_server(tmp_path) as replica, store(replica.url) as backend:
        run_one(backend)
        with redis.Redis(port=replica.port) as admin:
            admin.config_set("replica-serve-stale-data", "no")
            admin.replicaof("127.0.0.1", free_port())  # a master that is not there
        with pytest.raises(BackendUnavailable, match=r"MASTERDOWN|MasterDownError"):
            backend.stats(now=T0)


def test_a_closed_backend_is_backend_unavailable(server: RedisServer) -> None:
    backend = RedisBackend(server.url)
    run_one(backend)
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.stats(now=T0)


# -- scripts, lookups, forks ------------------------------------------------------------

def test_scripts_are_loaded_again_when_the_server_forgot_them(server: RedisServer,
                                                              raw: redis.Redis) -> None:
    with store(server.url) as backend:
        run_one(backend)
        raw.script_flush()
        run_one(backend, queue="low")  # a single script
        raw.script_flush()
        assert backend.forward(now=T0) == 0  # pipelined, one script per queue
        raw.script_flush()
        assert backend.enqueue(make_task(id="x"), now=T0)  # pipelined after the queue's SADD
        with pytest.raises(TaskAlreadyExists):
            backend.enqueue(make_task(id="x"), now=T0)


def test_another_process_finds_a_task_by_id_alone(server: RedisServer) -> None:
    """A store that did not enqueue or claim a task (an empty id cache) looks its queue up."""
    with store(server.url) as producer, store(server.url) as worker:
        a = producer.enqueue(make_task(queue="a"), now=T0).id
        b = producer.enqueue(make_task(queue="b"), now=T0).id
        [ta] = producer.claim(["a"], worker=W1, now=T0, lease_s=30, limit=1)
        [tb] = producer.claim(["b"], worker=W1, now=T0, lease_s=30, limit=1)
        assert worker.get(a).queue == "a"
        assert worker.renew([b, a, "nope"], worker=W1, until=T0 + 60) == [b, a]
        assert worker.finish_many([(a, DONE), ("nope", DONE), (b, DONE)], worker=W1,
                                  now=T0 + 1, leases=[str(ta.lease), "x", str(tb.lease)]
                                  ) == [True, False, True]
        assert [h.queue for h in producer.history()] == ["a", "b"]
        with pytest.raises(TaskNotFound):
            worker.act(a, "requeue", now=T0)


def test_one_id_in_two_queues_claimed_by_one_server(server: RedisServer) -> None:
    """Ids are unique per queue: a server holding the same id from two queues renews,
    finishes and hands back each claim in its own queue (the token names it)."""
    with store(server.url) as backend:
        for queue in ("a", "b", "c/d"):
            backend.enqueue(make_task(id="same", queue=queue), now=T0)
        claimed = backend.claim(["a", "b", "c/d"], worker=W1, now=T0, lease_s=30, limit=3)
        assert [(t.id, t.queue) for t in claimed] == [("same", "a"), ("same", "b"),
                                                      ("same", "c/d")]
        tokens = [str(t.lease) for t in claimed]
        ids = [t.id for t in claimed]
        assert backend.renew(ids, worker=W1, until=T0 + 60, leases=tokens) == tokens
        assert backend.recover(now=T0 + 45) == 0  # every renewal reached its own queue
        assert backend.finish_many([("same", DONE), ("same", DONE)], worker=W1, now=T0 + 1,
                                   leases=tokens[:2]) == [True, True]
        assert backend.hand_back(["same"], worker=W1, now=T0 + 1, leases=tokens[2:]) == 1
        assert sorted((h.queue, h.status) for h in backend.history()) == [
            ("a", "completed"), ("b", "completed"), ("c/d", "returned")]
        assert backend.renew(ids, worker=W1, until=T0 + 90, leases=tokens) == []


def test_a_claim_returns_what_it_took_when_a_later_queue_fails(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Queue ``a``'s script succeeds, queue ``b``'s is refused (an ACL user allowed only
    ``a``'s keys): a's tasks come back with their tokens, not stranded under the worker."""
    acl = ["--user", "onlya", "on", f">{SECRET}", "~poolsim:{a}:*", "+@all"]
    with redis_server(tmp_path, extra=acl) as limited, store(limited.url) as admin, \
            store(f"redis://onlya:{SECRET}@127.0.0.1:{limited.port}/0") as backend:
        a = [admin.enqueue(make_task(queue="a", max_retry=0), now=T0).id for _ in range(2)]
        admin.enqueue(make_task(queue="b"), now=T0)
        with caplog.at_level(logging.WARNING, logger="poolsim.queue"):
            got = backend.claim(["a", "b"], worker=W1, now=T0, lease_s=30, limit=5)
        assert [t.id for t in got] == a
        assert "queue 'b' failed after 2 task(s)" in caplog.text
        assert backend.finish_many([(t.id, DONE) for t in got], worker=W1, now=T0 + 1,
                                   leases=[str(t.lease) for t in got]) == [True, True]
        with pytest.raises(BackendUnavailable, match="NoPermissionError"):
            backend.claim(["b", "a"], worker=W1, now=T0, lease_s=30, limit=5)  # nothing taken
        assert [s.counts[State.PENDING] for s in admin.stats(now=T0)] == [0, 1]


def test_payloads_are_stored_as_the_json_text_given(server: RedisServer,
                                                    raw: redis.Redis) -> None:
    text = '{"code":"__import__(\'os\').system(\'false\')","n":1}'
    with store(server.url) as backend:
        task = backend.enqueue(make_task(payload=text), now=T0)
        [key] = [k for k in raw.keys("poolsim:{default}:t:*")]
        assert raw.hget(key, "payload") == text == backend.get(task.id).payload


def test_a_forked_child_uses_its_own_connections(server: RedisServer) -> None:
    with store(server.url) as backend:
        parent = backend.enqueue(make_task(), now=T0).id
        pid = os.fork()
        if pid == 0:  # the child: the parent's pooled connection must not be shared
            code = 1
            try:
                child = backend.enqueue(make_task(queue="child"), now=T0).id
                code = 0 if backend.get(parent).id == parent and backend.get(child) else 1
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        assert backend.get(parent).state == State.PENDING
        assert [s.queue for s in backend.stats(now=T0)] == ["child", "default"]


# -- bounded janitor scripts -----------------------------------------------------------

def evalsha_calls(raw: redis.Redis) -> int:
    """EVALSHA calls the server ran since the last ``CONFIG RESETSTAT``."""
    stats = raw.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def test_forward_moves_more_due_tasks_than_one_batch(server: RedisServer,
                                                     raw: redis.Redis) -> None:
    """Each script moves at most ``BATCH`` tasks (Redis blocks while one runs); one
    ``forward`` call still moves every due task, calling again while a batch was full."""
    due = redis_backend.BATCH * 2 + 7
    with store(server.url) as backend:
        for n in range(due):
            backend.enqueue(make_task(queue="a", process_at=T0 + 1 + n % 5), now=T0)
        backend.enqueue(make_task(queue="b", process_at=T0 + 1), now=T0)
        backend.enqueue(make_task(queue="a", process_at=T0 + 3600), now=T0)  # not due
        assert backend.forward(now=T0) == 0  # (loads the script)
        raw.config_resetstat()
        assert backend.forward(now=T0 + 10) == due + 1
        assert evalsha_calls(raw) >= 3  # a's queue: two full batches, then the rest
        stats = {s.queue: s.counts for s in backend.stats(now=T0 + 10)}
        assert stats["a"][State.PENDING] == due and stats["a"][State.SCHEDULED] == 1
        assert stats["b"][State.PENDING] == 1
        pending = backend.list_tasks(state=State.PENDING, queue="a", limit=10**6)
        assert [t.process_at for t in pending] == sorted(t.process_at for t in pending)
        assert backend.forward(now=T0 + 10) == 0


def test_recover_and_forward_work_in_batches(server: RedisServer, raw: redis.Redis,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Lapsed leases, due retries, expired completed tasks and old history: each in
    batches of ``BATCH`` (3 here), all of it done by one call."""
    monkeypatch.setattr(redis_backend, "BATCH", 3)
    with store(server.url + "?history_retention=100") as backend:
        for _ in range(10):
            backend.enqueue(make_task(queue="a", retention=50), now=T0)
        got = backend.claim(["a"], worker=W1, now=T0, lease_s=30, limit=10)
        assert backend.finish_many([(t.id, DONE) for t in got[:4]], worker=W1, now=T0 + 1,
                                   leases=[str(t.lease) for t in got[:4]]) == [True] * 4
        assert backend.forward(now=T0) == 0 and backend.recover(now=T0) == 0  # (load)
        raw.config_resetstat()
        assert backend.recover(now=T0 + 31) == 6
        assert evalsha_calls(raw) >= 3
        stats = backend.stats(now=T0 + 31)[0].counts
        assert stats[State.RETRY] == 6 and stats[State.ACTIVE] == 0
        raw.config_resetstat()
        assert backend.forward(now=T0 + 100) == 6  # the retries moved, the completed expired
        assert evalsha_calls(raw) >= 3
        stats = backend.stats(now=T0 + 100)[0].counts
        assert stats[State.PENDING] == 6 and stats[State.COMPLETED] == 0
        assert len(backend.history()) == 10
        assert len(raw.keys("poolsim:{a}:t:*")) == 6
        raw.config_resetstat()
        assert backend.forward(now=T0 + 500) == 0  # history older than 100 s: all pruned
        assert evalsha_calls(raw) >= 4
        assert backend.history() == []


# -- TLS --------------------------------------------------------------------------------

def make_certificates(dir: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    files = {name: dir / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}
    csr, ext = dir / "server.csr", dir / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=poolsim test CA", "-keyout", files["ca-key"], "-out", files["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", files["server-key"], "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", files["ca"], "-CAkey", files["ca-key"],
         "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", files["server"]],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True,
                       timeout=60)
    return files


def _tls_ping(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw_sock, \
                context.wrap_socket(raw_sock, server_hostname="127.0.0.1") as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def tls_server(dir: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    """A TLS-only ``redis-server`` (no plain port) on a free port, and its certificates."""
    files = make_certificates(dir)
    port = free_port()
    proc = subprocess.Popen(
        [require_redis(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(files["server"]), "--tls-key-file", str(files["server-key"]),
         "--tls-ca-cert-file", str(files["ca"]), "--tls-auth-clients", "no",
         "--save", "", "--dir", str(dir), "--logfile", str(dir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _tls_ping(port, files["ca"]):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the TLS redis-server did not start:\n{log}")
            time.sleep(0.05)
        yield port, files
    finally:
        proc.terminate()
        proc.wait(10)


def test_rediss_talks_tls(tmp_path: Path) -> None:
    with tls_server(tmp_path) as (port, files):
        url = (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={files['ca']}"
               "&ssl_cert_reqs=required&ssl_check_hostname=1")
        with store(url) as backend:
            task = run_one(backend, retention=60)
            assert backend.get(task).state == State.COMPLETED
        with store(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required") as backend, \
                pytest.raises(BackendUnavailable, match="certificate verify failed"):
            backend.stats(now=T0)  # the system's CAs do not know ours
        with store(f"redis://127.0.0.1:{port}/0?timeout=1") as backend, \
                pytest.raises(BackendUnavailable):
            backend.stats(now=T0)  # plain text to a TLS port


# -- Redis Cluster ----------------------------------------------------------------------

def test_a_cluster_keeps_each_queue_in_one_slot(tmp_path: Path) -> None:
    queues = [f"q{n}" for n in range(9)]
    with redis_cluster(tmp_path) as nodes, \
            store(f"redis://127.0.0.1:{nodes[0].port}/0?cluster=1") as backend, \
            redis.cluster.RedisCluster(host="127.0.0.1", port=nodes[1].port,
                                       decode_responses=True) as cluster:
        ids = {q: [backend.enqueue(make_task(queue=q, process_at=T0 - i), now=T0).id
                   for i in range(3)] for q in queues}
        backend.enqueue(make_task(queue="q0", process_at=T0 + 5), now=T0)
        client = backend._redis()
        assert isinstance(client, redis.cluster.RedisCluster)
        # No re-run of a script after a timeout (its first run may have happened):
        assert cluster_retries(client) == 0
        assert cluster_retries(client.pipeline()) == 0
        got = backend.claim(queues, worker=W1, now=T0, lease_s=30, limit=20)
        assert [t.queue for t in got] == [q for q in queues for _ in range(3)][:20]
        assert [t.id for t in got[:3]] == ids["q0"][::-1]  # oldest first
        done = [(t.id, DONE) for t in got[:10]]
        assert backend.finish_many(done, worker=W1, now=T0 + 1,
                                   leases=[str(t.lease) for t in got[:10]]) == [True] * 10
        assert backend.hand_back([got[10].id], worker=W1, now=T0 + 1) == 1
        assert backend.renew([t.id for t in got[11:]], worker=W1, until=T0 + 60) == [
            t.id for t in got[11:]]
        assert backend.recover(now=T0 + 61) == 9
        assert backend.forward(now=T0 + 70) == 1 + 9  # q0's scheduled task, the retries
        stats = {s.queue: s for s in backend.stats(now=T0 + 70)}
        assert sorted(stats) == queues
        assert sum(s.processed_today for s in stats.values()) == 10 + 9
        assert [h.status for h in backend.history()].count("retried") == 9
        assert backend.act(got[10].id, "delete", now=T0 + 70) is None
        keys = list(cluster.scan_iter(match="poolsim:*", target_nodes=cluster.ALL_NODES))
        node_of: dict[int, set[int]] = {}
        for q in queues:
            mine = [k for k in keys if k.startswith(f"poolsim:{{{q}}}:")]
            assert len(mine) >= 3  # sequences, state sets, history, counters, tasks...
            slots = {cluster.keyslot(k) for k in mine}
            assert len(slots) == 1
            [slot] = slots
            assert all(cluster.cluster_keyslot(k) == slot for k in mine[:3])  # CLUSTER KEYSLOT
            node_of.setdefault(cluster.get_node_from_key(mine[0]).port, set()).add(slot)
        assert len(node_of) == 3  # the queues are spread over every node


def test_the_queue_objects_never_show_a_password(server: RedisServer) -> None:
    """Client, Scheduler, Server and Inspector show their store's URL redacted."""
    from poolsim.queue import Client, Inspector, Scheduler, Server

    url = f"redis://me:{SECRET}@127.0.0.1:{server.port}/0"
    objects = [Client(url), Scheduler(url), Server(url), Inspector(url)]
    for obj in objects:
        assert SECRET not in repr(obj) and SECRET not in obj.url  # type: ignore[attr-defined]
        assert obj.url == redact_url(url)  # type: ignore[attr-defined]
    for obj in (objects[0], objects[3]):
        obj.close()  # type: ignore[attr-defined]


def cluster_retries(client: object) -> int:
    """How often a cluster client (or pipeline) re-runs a command after a timeout or a
    connection error: redis-py 5 counts it itself, later versions in their ``retry``."""
    if hasattr(client, "cluster_error_retry_attempts"):
        return int(client.cluster_error_retry_attempts)
    return int(client.retry.get_retries())  # type: ignore[attr-defined]
