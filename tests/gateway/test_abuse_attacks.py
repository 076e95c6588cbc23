"""Simulated attacks on a login API through real ``surefoot serve`` processes (issue 19).

Each test runs the login upstream (``examples/login/app.py``) as a process of its own, so
its ``GET /attempts`` counts every login attempt the gateway let through, and
``surefoot serve --workers 2`` in front of it; clients call over real sockets from
addresses of 127.0.0.0/8 (Linux routes all of it to ``lo``), one connection per request.

Two workers each keep their own ``BanSet``, brought in step through the store every
``[abuse] sync_every`` seconds: a ban is in force at once on the worker that made it and
on the other after its next sync. So that counts stay exact, a test that goes on after a
ban first waits until *each* worker has refused a probe: ``served_by`` finds which
worker process accepted a connection (its socket's inode in ``/proc/net/tcp``, then the
worker holding it), and a worker that refused once keeps refusing (the ban outlives the
test), so nothing can slip through a worker that has not synced yet.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    GatewayProcess,
    Server,
    problem,
    surefoot_serve,
    toml_config,
    wait_until,
)

from _services import store_url_sync
from _support import free_port
from surefoot.abuse import account_hash

pytestmark = pytest.mark.slow

WORKERS = 2
SUREFOOT = str(Path(sys.executable).with_name("surefoot"))
RIGHT = {"username": "alice", "password": "correct horse battery staple"}


# -- helpers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A response, and the pid of the worker process that served it."""

    response: httpx.Response
    worker: int

    @property
    def status(self) -> int:
        return self.response.status_code


def _proc_address(host: str, port: int) -> str:
    """``host:port`` as ``/proc/net/tcp`` writes it (IPv4, little-endian hex)."""
    return socket.inet_aton(host)[::-1].hex().upper() + f":{port:04X}"


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            found += [int(child) for child in children]
            todo += [int(child) for child in children]
    return found


def served_by(sock: socket.socket, supervisor: int) -> int:
    """The pid of the worker (a descendant of ``supervisor``) holding the server's end of
    the open connection ``sock``."""
    local_host, local_port = sock.getsockname()[:2]
    server_host, server_port = sock.getpeername()[:2]
    here = _proc_address(server_host, server_port)
    there = _proc_address(local_host, local_port)
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == here and fields[2] == there and fields[9] != "0":
            inode = fields[9]
    assert inode is not None, "the server's end of the connection is not found"
    wanted = f"socket:[{inode}]"
    for pid in _descendants(supervisor):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if fd.readlink().name == wanted:
                        return pid
    raise AssertionError(f"no worker of {supervisor} holds {wanted}")


def call(
    gateway: GatewayProcess,
    method: str,
    path: str,
    *,
    source: str,
    body: Any = None,
    admin: bool = False,
    who: bool = False,
) -> Answer:
    """One request from ``source`` on a new connection, and (``who``) the worker that
    served it (0 if not asked: finding it reads ``/proc``)."""
    # Plain HTTP: verify=False spares loading the CA bundle (50 ms) for every request.
    transport = httpx.HTTPTransport(local_address=source, verify=False)
    base = gateway.admin if admin else gateway.url
    with (
        httpx.Client(transport=transport, base_url=base, timeout=10) as client,
        client.stream(method, path, json=body) as response,
    ):
        response.read()
        worker = 0
        if who:
            sock = response.extensions["network_stream"].get_extra_info("socket")
            worker = served_by(sock, gateway.server.process.pid)
    return Answer(response, worker)


def on_every_worker(ask: Callable[[], Answer], holds: Callable[[Answer], bool], what: str) -> None:
    """Poll ``ask`` until each of the workers answered so that ``holds`` (its last answer
    does); for a state a worker keeps once it has it (a ban synced, a reload done)."""
    good: set[int] = set()

    def check() -> bool:
        answer = ask()
        assert answer.worker, "ask with who=True"
        if holds(answer):
            good.add(answer.worker)
        else:
            good.discard(answer.worker)
        return len(good) == WORKERS

    wait_until(check, timeout=20, what=f"{what} on both workers")


def attempts(upstream: str) -> int:
    count: int = httpx.get(upstream + "/attempts", timeout=5).json()["attempts"]
    return count


def log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def lines_of(path: Path, event: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(path) if line["event"] == event]


def login(gateway: GatewayProcess, source: str, username: str, password: str) -> Answer:
    return call(
        gateway, "POST", "/login", source=source, body={"username": username, "password": password}
    )


@dataclass
class Stack:
    gateway: GatewayProcess
    upstream: str
    log: Path


@contextlib.contextmanager
def stack(tmp: Path, rules: str, store: str | None = None) -> Iterator[Stack]:
    """The login upstream (its own process) and ``surefoot serve --workers 2`` in front of
    it, with ``[abuse]`` syncing every 0.2 s, its log in ``tmp`` and ``rules`` added."""
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "examples.login.app:app", "--port", str(port)]
    upstream = Server([*command, "--log-level", "warning"], log=tmp / "upstream.log")
    log = tmp / "abuse.jsonl"
    body = (
        '[[routes]]\nmatch = "POST /login"\nidempotency = false\n\n'
        '[[routes]]\nmatch = "POST /probe"\nidempotency = false\n\n'
        f'[abuse]\nsync_every = 0.2\nlog = "{log}"\n\n' + rules
    )
    config = toml_config(upstream_url, store or f"sqlite:///{tmp / 'gw.db'}", body)
    gateway = surefoot_serve(tmp, config, "--workers", str(WORKERS))
    try:
        upstream.wait_ready(upstream_url + "/attempts")
        gateway.wait_ready()
        yield Stack(gateway, upstream_url, log)
    finally:
        gateway.server.stop()
        upstream.stop()


def banned(answer: Answer) -> bool:
    return answer.status == 403


# -- the attacks -------------------------------------------------------------------------------

#: The login rules of examples/login/gateway.toml, shorter. POST /probe names the account
#: as a login would, but the upstream answers it 404 (not a failure) and does not count it
#: as an attempt: a harmless way to ask each worker whether an account's ban is in force.
LOGIN_RULES = (
    '[[abuse.failures]]\nname = "login-address"\nroutes = ["POST /login"]\n'
    'by = "address"\nthreshold = 10\nwindow = 600\nban = 600\n\n'
    '[[abuse.failures]]\nname = "login-account"\nroutes = ["POST /login", "POST /probe"]\n'
    'by = "account"\naccount = "json:username"\nthreshold = 5\nwindow = 900\nban = 900\n'
)


@pytest.fixture(scope="module")
def logins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gateway for the login attacks (starting one takes seconds): each test uses
    addresses and accounts of its own, and counts the upstream's attempts from its start."""
    with stack(tmp_path_factory.mktemp("logins"), LOGIN_RULES) as s:
        yield s


def test_credential_stuffing_is_stopped_after_the_threshold_on_every_worker(
    logins: Stack,
) -> None:
    """200 addresses, one wrong password each, all on "alice": the account is banned at
    the 5th failure, and nothing more reaches the upstream."""
    s = logins
    before = attempts(s.upstream)
    sources = [f"127.0.{10 + i // 100}.{1 + i % 100}" for i in range(200)]
    statuses = [login(s.gateway, source, "alice", "wrong").status for source in sources[:5]]
    # Rule 4 of the middleware: the 5th failure is answered as the app answered it.
    assert statuses == [401] * 5
    assert attempts(s.upstream) - before == 5

    # The ban is in force at once on the worker that made it, on the other after its
    # next sync: go on once each worker has refused the account.
    probe = {"username": "alice"}
    on_every_worker(
        lambda: call(s.gateway, "POST", "/probe", source="127.0.9.1", body=probe, who=True),
        banned,
        "the ban of the account",
    )
    later = [login(s.gateway, source, "alice", "wrong") for source in sources[5:]]
    for answer in later:
        problem(answer.response, 403, "access_denied")
        assert "retry-after" not in answer.response.headers
        text = answer.response.text.lower()
        assert "ban" not in text
        assert "failures" not in text
        assert "alice" not in text
    # Even the right password is refused now: the account is banned, not the guess.
    right = login(s.gateway, "127.0.12.1", "alice", RIGHT["password"])
    problem(right.response, 403, "access_denied")
    assert attempts(s.upstream) - before == 5

    alice = account_hash("alice")

    def added() -> list[dict[str, Any]] | None:
        found = [a for a in lines_of(s.log, "abuse.added") if a["kind"] == "account"]
        return found or None

    (line,) = wait_until(added, timeout=10, what="the account's ban in the abuse log")
    assert line["subject"] == alice
    assert (line["action"], line["source"], line["offence"]) == ("ban", "failures:login-account", 1)
    assert line["duration"] == 900
    crossed = [c for c in lines_of(s.log, "abuse.threshold") if c["subject"] == alice]
    assert [(c["rule"], c["count"], c["threshold"], c["step"]) for c in crossed] == [
        ("login-account", 5, 5, "ban")
    ]
    assert crossed[0]["address"] == sources[4]  # the 5th failure's
    assert "alice" not in s.log.read_text().lower()  # accounts are hashed


def test_password_spraying_bans_the_address_not_the_accounts(logins: Stack) -> None:
    """One address tries 30 accounts: 10 failures reach the upstream, then the address is
    banned; bob can still log in from elsewhere."""
    s = logins
    before = attempts(s.upstream)
    sprayer = "127.0.30.1"
    first = [login(s.gateway, sprayer, f"user{i}", "Summer2026!").status for i in range(10)]
    assert first == [401] * 10
    on_every_worker(
        lambda: call(s.gateway, "GET", "/orders", source=sprayer, who=True),
        banned,
        "the address's ban",
    )
    for i in range(10, 30):
        sprayed = login(s.gateway, sprayer, f"user{i}", "Summer2026!")
        problem(sprayed.response, 403, "access_denied")
    assert attempts(s.upstream) - before == 10

    elsewhere = login(s.gateway, "127.0.30.2", "bob", "hunter2-but-longer")
    assert elsewhere.status == 200
    assert elsewhere.response.json() == {"token": "token-for-bob"}

    def added() -> list[dict[str, Any]] | None:
        found = [a for a in lines_of(s.log, "abuse.added") if a["subject"] == sprayer]
        return found or None

    lines = wait_until(added, timeout=10, what="the address's ban in the abuse log")
    assert [(a["kind"], a["source"], a["offence"]) for a in lines] == [
        ("address", "failures:login-address", 1)
    ]
    # Each account was tried once: none of them is banned.
    accounts = {account_hash(f"user{i}") for i in range(30)}
    assert not [a for a in lines_of(s.log, "abuse.added") if a["subject"] in accounts]


def test_a_user_who_mistypes_a_few_times_is_never_banned(logins: Stack) -> None:
    s = logins
    user = "127.0.40.1"
    tries = [login(s.gateway, user, "bob", f"hunter{i}").status for i in range(3)]
    assert tries == [401, 401, 401]
    right = login(s.gateway, user, "bob", "hunter2-but-longer")
    assert right.status == 200
    orders = [call(s.gateway, "GET", "/orders", source=user) for _ in range(20)]
    assert [a.status for a in orders] == [200] * 20
    listed = s.gateway.admin_get("/admin/bans")["entries"]
    assert [e for e in listed if e["value"] in (user, account_hash("bob"))] == []
    assert [
        line
        for line in log_lines(s.log)
        if line.get("subject") in (user, account_hash("bob")) or line.get("address") == user
    ] == []


def test_a_second_offence_is_banned_longer(tmp_path: Path) -> None:
    """ban = 2 s, ban_factor = 3: the first ban lasts 2 s, the second 6 s."""
    rules = (
        '[[abuse.failures]]\nname = "login-address"\nroutes = ["POST /login"]\n'
        'by = "address"\nthreshold = 2\nwindow = 60\nban = 2\nban_factor = 3\n'
    )
    with stack(tmp_path, rules) as s:
        source = "127.0.50.1"

        def orders(who: bool = False) -> Answer:
            return call(s.gateway, "GET", "/orders", source=source, who=who)

        def probe() -> Answer:
            return orders(who=True)

        assert [login(s.gateway, source, "alice", "nope").status for _ in range(2)] == [401, 401]
        # Both workers hold the first ban (probes take milliseconds, a sync 0.2 s, the ban
        # two seconds, so a busy machine still sees it on both):
        # the one that counts the next failures knows the subject's history.
        on_every_worker(probe, banned, "the first ban")
        first = wait_until(
            lambda: lines_of(s.log, "abuse.added") or None, timeout=10, what="the first ban"
        )
        assert [(a["offence"], a["duration"]) for a in first] == [(1, 2.0)]
        assert first[0]["until"] is not None
        # Until it lifts (2 s after it was made): no sleep, the ban's own expiry is polled.
        on_every_worker(probe, lambda a: a.status == 200, "the first ban lifted")

        # Rule 5 of _failures: a ban starts the count again, so it takes two new failures
        # (the second answered as the app answered it: Rule 4 of the middleware) to make
        # the second offence, and the subject's history makes that ban 3 times longer.
        assert [login(s.gateway, source, "alice", "nope").status for _ in range(2)] == [401, 401]
        on_every_worker(probe, banned, "the second ban")

        def two_bans() -> list[dict[str, Any]] | None:
            found = lines_of(s.log, "abuse.added")
            return found if len(found) >= 2 else None

        added = wait_until(two_bans, timeout=10, what="the second ban's line")
        assert [(a["offence"], a["duration"]) for a in added] == [(1, 2.0), (2, 6.0)]
        assert all(a["subject"] == source for a in added)
        entries = s.gateway.admin_get("/admin/bans")["entries"]
        # Listed while in force: one entry, its second offence, for 6 s from when it was made.
        if entries:  # the admin call may come after the 6 s: then nothing is listed
            (entry,) = entries
            assert (entry["kind"], entry["value"], entry["offence"]) == ("address", source, 2)
            assert entry["until"] - entry["at"] == pytest.approx(6.0)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_an_admin_ban_holds_on_both_workers_across_a_reload_until_removed(
    tmp_path: Path, kind: str
) -> None:
    """A ban made through the admin API (on one worker) reaches the other through the
    store, survives a SIGHUP reload of every worker, and ``surefoot bans remove`` (another
    process, through the same store) lifts it everywhere."""
    with store_url_sync(kind, tmp_path) as store, stack(tmp_path, "", store) as s:
        source = "127.0.20.1"

        def orders(who: bool = False) -> Answer:
            return call(s.gateway, "GET", "/orders", source=source, who=who)

        def probe() -> Answer:
            return orders(who=True)

        assert orders().status == 200
        made = httpx.post(
            s.gateway.admin + "/admin/bans",
            headers=ADMIN_HEADERS,
            json={"address": source, "duration": "1h", "reason": "t"},
            timeout=5,
        )
        assert made.status_code == 201, made.text
        on_every_worker(probe, banned, "the admin's ban")
        answers = [orders() for _ in range(20)]
        assert [a.status for a in answers] == [403] * 20
        assert orders().status == 403
        assert call(s.gateway, "GET", "/orders", source="127.0.20.2").status == 200

        # A reload (SIGHUP to the supervisor, passed on to every worker) keeps the entries.
        with s.gateway.config.open("a") as config:
            config.write("# reloaded\n")
        s.gateway.server.signal(signal.SIGHUP)
        on_every_worker(
            lambda: call(s.gateway, "GET", "/healthz", source="127.0.0.1", admin=True, who=True),
            lambda a: a.response.json()["generation"] == 1,
            "the reload",
        )
        on_every_worker(probe, banned, "the ban after the reload")
        assert [orders().status for _ in range(20)] == [403] * 20

        removed = subprocess.run(
            [SUREFOOT, "bans", "remove", "--config", str(s.gateway.config), "--address", source],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert f"ban address {source}: removed" in removed.stdout
        on_every_worker(probe, lambda a: a.status == 200, "the ban lifted")
        assert [orders().status for _ in range(10)] == [200] * 10
        events = [(line["event"], line.get("source", "")) for line in log_lines(s.log)]
        assert events == [("abuse.added", "admin"), ("abuse.removed", "")]
