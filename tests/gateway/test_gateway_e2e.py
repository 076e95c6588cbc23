"""``surefoot serve`` over real sockets, in front of the legacy payments API in its own process.

Every server runs on a free port of 127.0.0.1 and is polled until it answers; the clients
here are plain httpx clients, retrying like a careful client would (same key, every time).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    GatewayProcess,
    Server,
    charge,
    legacy_upstream,
    rate,
    settled,
    surefoot_serve,
    toml_config,
    wait_until,
)

from _services import store_url_sync
from surefoot.identity import hash_credential

pytestmark = pytest.mark.slow

LOOKUP_ROUTE = """
[[routes]]
match = "POST /charges"
[routes.idempotency]
on_server_error = "unknown"
[routes.idempotency.lookup]
path = "/charges/by-reference/{body.reference}"
found = [200]
not_found = [404]
status = 201
"""


def policy(name: str, limit: str, route: str, algorithm: str = "sliding_window") -> str:
    return (
        f'\n[[rate_limit.policies]]\nname = "{name}"\nlimits = ["{limit}"]\n'
        f'algorithm = "{algorithm}"\nroutes = ["{route}"]\n'
    )


def problem_code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    code: str = response.json()["code"]
    return code


def audit(upstream: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(upstream + "/audit", timeout=5).json()
    return result


def started(*servers: tuple[Server, str]) -> None:
    """Wait for every server (they were all started before: they come up together)."""
    for server, url in servers:
        server.wait_ready(url)


@contextlib.contextmanager
def serving(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


# -- one upstream and one gateway for the simple cases --------------------------------------


@dataclass
class Shared:
    upstream: str
    gateway: GatewayProcess


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    up_dir, gw_dir = tmp_path_factory.mktemp("upstream"), tmp_path_factory.mktemp("gateway")
    upstream, url = legacy_upstream(up_dir)
    body = (
        policy("charges", "3/minute", "POST /charges")
        + policy("lists", "3/minute", "GET /charges")
        + LOOKUP_ROUTE
    )
    gateway = surefoot_serve(gw_dir, toml_config(url, f"sqlite:///{gw_dir}/store.db", body))
    with serving(gateway.server, upstream):
        started((upstream, url + "/health"), (gateway.server, gateway.admin + "/healthz"))
        yield Shared(url, gateway)


def test_a_keyed_charge_is_replayed_and_the_limit_answers_a_problem(shared: Shared) -> None:
    with httpx.Client(base_url=shared.gateway.url, headers={"X-API-Key": "replayer"}) as client:
        key = {"Idempotency-Key": "k-replay"}
        first = client.post("/charges", json=charge("replay-1"), headers=key)
        again = settled(lambda: client.post("/charges", json=charge("replay-1"), headers=key))
        other = client.post("/charges", json=charge("replay-2"), headers={"Idempotency-Key": "k2"})
        refused = client.post(
            "/charges", json=charge("replay-3"), headers={"Idempotency-Key": "k3"}
        )
    booked = httpx.get(shared.upstream + "/charges/by-reference/replay-1").json()
    never = httpx.get(shared.upstream + "/charges/by-reference/replay-3")

    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 201)
    assert first.json() == booked
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert [rate(r)["charges"]["r"] for r in (first, again, other)] == [2, 1, 0]

    assert refused.status_code == 429
    assert problem_code(refused) == "rate_limit_exceeded"
    body = refused.json()
    retry_after = int(refused.headers["retry-after"])
    assert 0 < retry_after <= 120  # a sliding window: up to its window and a bit
    assert body["retry_after"] == retry_after
    assert body["request_id"] == refused.headers["x-request-id"]
    assert rate(refused, "ratelimit-policy") == {
        "charges": {"q": 3, "w": 60},
        "address": {"q": 1000, "w": 60},  # [identity] address_limits, by default
    }
    assert rate(refused)["charges"]["r"] == 0
    assert never.status_code == 404


def test_a_spoofed_forwarded_for_does_not_change_the_client_s_limit(shared: Shared) -> None:
    statuses = []
    with httpx.Client(base_url=shared.gateway.url) as client:
        for i in range(5):
            spoofed = {"X-Forwarded-For": f"198.51.100.{i}"}
            statuses.append(client.get("/charges?limit=1", headers=spoofed).status_code)
    limits = shared.gateway.admin_get("/admin/limits?principal=addr:127.0.0.1")

    assert statuses == [200, 200, 200, 429, 429]
    lists = [x for x in limits["principals"][0]["limits"] if x["policy"] == "lists"]
    assert [x["remaining"] for x in lists] == [0]


# -- hot reload -----------------------------------------------------------------------------


class Load:
    """One client sending GET /health through the gateway, one request after another."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[int, int, int]] = []  # status, limit, remaining
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"X-API-Key": "loader"}, timeout=10) as c:
            while not self.stop.is_set():
                try:
                    response = c.get("/health")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                limit = rate(response, "ratelimit-policy").get("reads", {}).get("q", -1)
                left = rate(response).get("reads", {}).get("r", -1)
                self.results.append((response.status_code, limit, left))

    def count(self, at_least: int) -> bool:
        return len(self.results) >= at_least

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


def test_sighup_reloads_under_load_without_failing_a_request(
    shared: Shared, tmp_path: Path
) -> None:
    # A sliding log: nothing leaves an hour's window during the test, so usage only grows.
    store = f"sqlite:///{tmp_path}/store.db"
    reads = policy("reads", "1000/hour", "GET /health", algorithm="sliding_log")
    before = toml_config(shared.upstream, store, reads)
    after = toml_config(shared.upstream, store, reads.replace("1000/hour", "800/hour"))
    gateway = surefoot_serve(tmp_path, before)
    with serving(gateway.server):
        gateway.wait_ready()
        with Load(gateway.url) as load:
            wait_until(lambda: load.count(20), timeout=20, what="20 requests")
            gateway.config.write_text(after)
            gateway.server.signal(signal.SIGHUP)
            wait_until(
                lambda: gateway.admin_get("/admin/config")["generation"] == 1,
                timeout=10,
                what="the reload",
            )
            reloaded_at = len(load.results)
            wait_until(lambda: load.count(reloaded_at + 20), timeout=20, what="20 more requests")

        assert load.errors == []
        statuses = {status for status, _, _ in load.results}
        assert statuses == {200}
        limits = [limit for _, limit, _ in load.results]
        assert limits[0] == 1000
        assert limits[-1] == 800
        switched = limits.index(800)
        assert set(limits[:switched]) == {1000}
        assert set(limits[switched:]) == {800}
        # Every request used one more than the one before, across the reload too.
        used = [limit - left for _, limit, left in load.results]
        assert used == list(range(1, len(used) + 1))

        # A broken file is refused: the configuration in force stays.
        gateway.config.write_text(after.replace('"800/hour"', '"800/fortnight"'))
        gateway.server.signal(signal.SIGHUP)

        def refused() -> bool:
            metrics = httpx.get(gateway.admin + "/metrics", headers=ADMIN_HEADERS).text
            return 'surefoot_config_reloads_total{result="refused"} 1.0' in metrics

        wait_until(refused, timeout=10, what="the refused reload")
        assert gateway.admin_get("/admin/config")["generation"] == 1
        response = httpx.get(gateway.url + "/health", headers={"X-API-Key": "loader"})
        assert response.status_code == 200
        assert rate(response, "ratelimit-policy")["reads"]["q"] == 800
        assert "800/fortnight" in gateway.server.tail()


# -- two workers ----------------------------------------------------------------------------


def workers_of(pid: int, *, expected: int) -> list[int] | None:
    """The ``expected`` worker processes ``surefoot serve`` started (multiprocessing's spawned
    children), or None while there are not that many."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid and b"spawn_main" in command:
            found.append(int(entry.name))
    return sorted(found) if len(found) == expected else None


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """``pid`` stopped (SIGSTOP): the other worker accepts every new connection."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_two_workers_share_limits_and_idempotency_records(
    shared: Shared, tmp_path: Path, kind: str
) -> None:
    body = policy("lists", "4/minute", "GET /charges") + LOOKUP_ROUTE
    sharer = {"X-API-Key": "sharer"}
    key = sharer | {"Idempotency-Key": "k-shared"}
    record = f"/admin/keys?principal={hash_credential(b'sharer')}&key=k-shared"
    with store_url_sync(kind, tmp_path) as store:
        config = toml_config(shared.upstream, store, body)
        gateway = surefoot_serve(tmp_path, config, "--workers", "2")
        with serving(gateway.server):
            gateway.wait_ready()
            first, second = wait_until(
                lambda: workers_of(gateway.server.process.pid, expected=2),
                timeout=10,
                what="two workers",
            )
            with frozen(second), httpx.Client(base_url=gateway.url, timeout=20) as client:
                executed = client.post("/charges", json=charge(f"shared-{kind}"), headers=key)
                lists = [client.get("/charges?limit=1", headers=sharer) for _ in range(2)]
                completed = wait_until(
                    lambda: gateway.admin_get(record)["state"] == "completed",
                    timeout=10,
                    what="the record",
                )
            with frozen(first), httpx.Client(base_url=gateway.url, timeout=20) as client:
                replayed = settled(
                    lambda: client.post("/charges", json=charge(f"shared-{kind}"), headers=key)
                )
                lists += [client.get("/charges?limit=1", headers=sharer) for _ in range(3)]

    assert completed
    assert executed.status_code == 201
    assert replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == executed.content
    assert [r.status_code for r in lists] == [200, 200, 200, 200, 429]
    assert [rate(r)["lists"]["r"] for r in lists] == [3, 2, 1, 0, 0]
    booked = httpx.get(f"{shared.upstream}/charges/by-reference/shared-{kind}").json()
    assert booked["id"] == executed.json()["id"]
    assert f"shared-{kind}" not in audit(shared.upstream)["duplicated_references"]


# -- the circuit breaker --------------------------------------------------------------------


def test_hangs_and_5xx_open_the_breaker_and_it_recovers_half_open(
    shared: Shared, tmp_path: Path
) -> None:
    body = """
[upstream.breaker]
failure_rate_threshold = 0.5
minimum_calls = 4
window_size = 4
open_wait = 1
half_open_calls = 1

[[routes]]
match = "GET /slow"
timeout = 0.3
"""
    config = toml_config(shared.upstream, f"sqlite:///{tmp_path}/store.db", body)
    gateway = surefoot_serve(tmp_path, config)
    with serving(gateway.server), httpx.Client(base_url=gateway.url, timeout=10) as client:
        gateway.wait_ready()
        hangs = [client.get("/slow?seconds=5") for _ in range(2)]
        errors = [client.get("/status/500") for _ in range(2)]
        opened = client.get("/health")
        breaker = gateway.admin_get("/readyz")["breaker"]

        def passed() -> httpx.Response | None:  # once open_wait is over, a probe goes through
            response = client.get("/health")
            return response if response.status_code == 200 else None

        recovered = wait_until(passed, timeout=10, what="the breaker to let a probe through")
        after = client.get("/health")
        closed = gateway.admin_get("/readyz")["breaker"]

    assert [(r.status_code, problem_code(r)) for r in hangs] == [(504, "upstream_timeout")] * 2
    assert [(r.status_code, problem_code(r)) for r in errors] == [(502, "upstream_unavailable")] * 2
    assert (opened.status_code, problem_code(opened)) == (503, "circuit_open")
    assert opened.headers["retry-after"] == "1"
    assert breaker == "open"
    assert recovered.json() == {"status": "ok"}
    assert after.status_code == 200
    assert closed == "closed"


# -- a legacy upstream that commits and then fails --------------------------------------------

CHARGES = 60
FAIL_AFTER_COMMIT = 0.3
SEED = 7


def drawn(*, retry_executes: bool) -> tuple[int, int, int]:
    """What the seeded upstream will do for CHARGES charges sent one after another: failures
    seen by the client, charges booked, references booked twice or more."""
    rng = random.Random(SEED)
    failures = booked = duplicated = 0
    for _ in range(CHARGES):
        commits = 1
        while rng.random() < FAIL_AFTER_COMMIT:
            failures += 1
            if not retry_executes:
                break  # the retry is answered by the lookup: no new request, no draw
            commits += 1
        booked += commits
        duplicated += commits > 1
    return failures, booked, duplicated


@dataclass
class Run:
    finals: dict[str, dict[str, Any]]  # reference -> the client's final 201 body
    failures: int  # 502 answers the client saw (and retried)
    audit: dict[str, Any]  # the upstream's GET /audit
    booked: dict[str, dict[str, Any]]  # reference -> the upstream's charge
    unknown: list[dict[str, Any]]  # the gateway's keys still outcome unknown


def charge_all(tmp_path: Path, route: str) -> Run:
    """CHARGES charges through a gateway (``route``) in front of a seeded, failing upstream;
    the client retries every 502 with the same key until it gets its 201."""
    upstream, url = legacy_upstream(
        tmp_path, "--fail-after-commit", str(FAIL_AFTER_COMMIT), "--seed", str(SEED)
    )
    gateway = surefoot_serve(tmp_path, toml_config(url, f"sqlite:///{tmp_path}/store.db", route))
    finals: dict[str, dict[str, Any]] = {}
    failures = 0
    with serving(gateway.server, upstream), httpx.Client(base_url=gateway.url, timeout=10) as c:
        started((upstream, url + "/health"), (gateway.server, gateway.admin + "/healthz"))
        for i in range(CHARGES):
            reference, key = f"order-{i}", {"Idempotency-Key": f"key-{i}"}

            def send(reference: str = reference, key: dict[str, str] = key) -> httpx.Response:
                return c.post("/charges", json=charge(reference), headers=key)

            for _ in range(10):
                response = settled(send)
                if response.status_code == 201:
                    finals[reference] = response.json()
                    break
                assert response.status_code == 502, response.text
                assert response.json()["retry_safe"] is True
                failures += 1
            else:
                raise AssertionError(f"{reference}: no 201 after 10 attempts")
        return Run(
            finals=finals,
            failures=failures,
            audit=audit(url),
            booked={ref: httpx.get(f"{url}/charges/by-reference/{ref}").json() for ref in finals},
            unknown=gateway.admin_get("/admin/unknown")["unknown"],
        )


def test_a_failing_legacy_upstream_never_charges_twice_behind_the_gateway(
    tmp_path: Path,
) -> None:
    failures, _, _ = drawn(retry_executes=False)

    run = charge_all(tmp_path, LOOKUP_ROUTE)

    assert failures > 0
    assert run.failures == failures  # the upstream did fail, as seeded
    assert run.audit == {"charges": CHARGES, "references": CHARGES, "duplicated_references": []}
    assert len(run.finals) == CHARGES
    for reference, final in run.finals.items():
        assert final["id"] == run.booked[reference]["id"], reference
        assert final == run.booked[reference]
    assert run.unknown == []


def test_releasing_keys_after_a_5xx_charges_twice(tmp_path: Path) -> None:
    failures, booked, duplicated = drawn(retry_executes=True)
    route = (
        '[[routes]]\nmatch = "POST /charges"\n[routes.idempotency]\non_server_error = "release"\n'
    )

    run = charge_all(tmp_path, route)

    assert duplicated > 0
    assert run.failures == failures
    assert run.audit["charges"] == booked
    assert len(run.audit["duplicated_references"]) == duplicated
