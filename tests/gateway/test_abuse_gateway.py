"""Abuse protection in the gateway, in process: failure rules, bans and allows, challenges,
anomalies, the admin API and the CLI (real sockets and workers: ``test_abuse_attacks.py``)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import ADMIN_HEADERS, gateway_config, problem, running
from click.testing import CliRunner
from examples.login.app import LoginApp

from _support import T0, of
from surefoot.abuse import AnomalyStarted, EntryAdded, FailuresCrossed, account_hash, shown
from surefoot.cli import main
from surefoot.errors import ConfigurationError
from surefoot.gateway import GatewayConfig, load_config
from surefoot.identity import hash_credential
from surefoot.storage import store_from_url
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

LOGIN = [{"match": "POST /login", "idempotency": False}]
BY_ADDRESS = {"name": "spray", "routes": ["POST /login"], "by": "address", "threshold": 10}
BY_ACCOUNT = {
    "name": "stuffing",
    "routes": ["POST /login"],
    "by": "account",
    "account": "json:username",
    "threshold": 5,
}


def config(**abuse: Any) -> GatewayConfig:
    return gateway_config(routes=LOGIN, abuse=abuse)


async def attempt(r: Any, address: str, user: str, password: str = "wrong") -> httpx.Response:
    async with r.connect(client=address) as client:
        response: httpx.Response = await client.post(
            "/login", json={"username": user, "password": password}
        )
        return response


async def test_credential_stuffing_from_many_addresses_is_stopped_at_the_threshold() -> None:
    login, events = LoginApp(), []
    async with running(config(failures=[BY_ACCOUNT]), upstream=login, hooks=[events.append]) as r:
        statuses = [(await attempt(r, f"127.0.{i // 250}.{i % 250 + 1}", "alice")).status_code
                    for i in range(200)]  # fmt: skip
        assert statuses == [401] * 5 + [403] * 195
        assert login.attempts == 5
        denied = await attempt(r, "127.0.9.9", "alice", "correct horse battery staple")
        body = problem(denied, 403, "access_denied")  # even the right password: the account
        assert "retry-after" not in denied.headers
        assert "ban" not in json.dumps(body).lower()
        assert "alice" not in json.dumps(body)
        assert (await attempt(r, "127.0.9.9", "bob", "hunter2-but-longer")).status_code == 200
    [crossed] = of(events, FailuresCrossed)
    assert (crossed.rule, crossed.step, crossed.count, crossed.kind) == (
        "stuffing",
        "ban",
        5,
        "account",
    )
    assert "alice" not in repr(events)


async def test_password_spraying_from_one_address_is_stopped_and_others_are_not() -> None:
    login = LoginApp()
    async with running(config(failures=[BY_ADDRESS]), upstream=login) as r:
        statuses = [(await attempt(r, "127.0.0.66", f"user{i}")).status_code for i in range(30)]
        assert statuses == [401] * 10 + [403] * 20
        assert login.attempts == 10
        ok = await attempt(r, "127.0.0.67", "alice", "correct horse battery staple")
        assert ok.status_code == 200


async def test_a_legitimate_client_with_a_few_failed_logins_is_never_banned() -> None:
    async with running(config(failures=[BY_ADDRESS, BY_ACCOUNT]), upstream=LoginApp()) as r:
        for _ in range(3):
            assert (await attempt(r, "127.0.0.5", "alice")).status_code == 401
        ok = await attempt(r, "127.0.0.5", "alice", "correct horse battery staple")
        assert ok.status_code == 200
        async with r.connect(client="127.0.0.5") as client:
            assert (await client.get("/orders")).status_code == 200
        listed = (await r.admin.get("/admin/bans", headers=ADMIN_HEADERS)).json()
        assert listed == {"entries": [], "total": 0}


async def test_a_ban_grows_on_each_offence_and_is_forgotten_after_forget_after() -> None:
    clock = ManualClock(T0)
    rule = {**BY_ADDRESS, "threshold": 2, "ban": 60, "ban_factor": 3, "forget_after": 600}
    async with running(config(failures=[rule]), upstream=LoginApp(), clock=clock) as r:

        async def offend() -> dict[str, Any]:
            assert (await attempt(r, "127.0.0.8", "x")).status_code == 401
            assert (await attempt(r, "127.0.0.8", "x")).status_code == 401
            assert (await attempt(r, "127.0.0.8", "x")).status_code == 403
            entries = (await r.admin.get("/admin/bans", headers=ADMIN_HEADERS)).json()["entries"]
            [entry] = entries
            return entry

        first = await offend()
        assert (first["offence"], first["until"] - first["at"]) == (1, 60)
        clock.advance(61)
        second = await offend()
        assert (second["offence"], second["until"] - second["at"]) == (2, 180)
        clock.advance(179)
        assert (await attempt(r, "127.0.0.8", "x")).status_code == 403  # still in force
        clock.advance(2 + 600 + 61)  # past the ban, and past its memory
        third = await offend()
        assert third["offence"] == 1


async def test_an_allow_always_wins_and_is_never_counted() -> None:
    login = LoginApp()
    abuse = config(failures=[BY_ADDRESS], allow=[{"network": "10.0.0.0/8", "reason": "office"}])
    async with running(abuse, upstream=login) as r:
        statuses = {(await attempt(r, "10.1.2.3", f"u{i}")).status_code for i in range(15)}
        assert statuses == {401}
        assert login.attempts == 15
        added = await r.admin.post(
            "/admin/bans", headers=ADMIN_HEADERS, json={"address": "10.1.2.3", "duration": "1h"}
        )
        assert added.status_code == 201
        assert (await attempt(r, "10.1.2.3", "alice")).status_code == 401  # the allow wins


async def test_a_network_rule_bans_the_whole_prefix() -> None:
    rule = {
        "name": "net",
        "routes": ["POST /login"],
        "by": "network",
        "threshold": 4,
        "statuses": ["4xx"],
    }
    async with running(config(failures=[rule]), upstream=LoginApp()) as r:
        for i in range(4):
            assert (await attempt(r, f"198.51.100.{i + 1}", "x")).status_code == 401
        assert (await attempt(r, "198.51.100.200", "x")).status_code == 403
        async with r.connect(client="198.51.100.201") as client:
            assert (await client.get("/orders")).status_code == 403  # every route
        assert (await attempt(r, "198.51.101.1", "x")).status_code == 401


async def test_an_api_key_banned_through_the_admin_api_is_refused_and_never_echoed() -> None:
    key = "sk_test_0123456789abcdef"
    async with running(config(), upstream=LoginApp()) as r:
        added = await r.admin.post(
            "/admin/bans", headers=ADMIN_HEADERS, json={"key": key, "reason": "leaked"}
        )
        assert added.status_code == 201
        assert key not in added.text
        [entry] = added.json()["added"]
        assert (entry["kind"], entry["value"]) == ("principal", hash_credential(key.encode()))
        refused = await r.client.get("/orders", headers={"X-API-Key": key})
        problem(refused, 403, "access_denied")
        assert (await r.client.get("/orders", headers={"X-API-Key": "another"})).status_code == 200
        removed = await r.admin.post("/admin/bans/remove", headers=ADMIN_HEADERS, json={"key": key})
        assert removed.status_code == 200
        assert (await r.client.get("/orders", headers={"X-API-Key": key})).status_code == 200
        again = await r.admin.post("/admin/bans/remove", headers=ADMIN_HEADERS, json={"key": key})
        problem(again, 404, "admin_not_found")


async def test_a_suspicious_client_is_sent_to_the_challenge_before_it_is_banned() -> None:
    rule = {**BY_ADDRESS, "threshold": 5, "challenge_after": 2}
    challenge = {"url": "https://example.com/verify", "retry_after": 45}
    async with running(config(failures=[rule], challenge=challenge), upstream=LoginApp()) as r:
        assert [(await attempt(r, "127.0.0.9", "x")).status_code for _ in range(2)] == [401, 401]
        challenged = await attempt(r, "127.0.0.9", "x")
        body = problem(challenged, 429, "challenge_required")
        assert body["challenge"] == "https://example.com/verify"
        assert challenged.headers["retry-after"] == "45"


async def test_the_challenge_can_be_a_header_for_the_upstream_to_act_on() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []
    login = LoginApp()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        await login(scope, receive, send)

    rule = {**BY_ADDRESS, "threshold": 5, "challenge_after": 2}
    challenge = {"action": "header", "header": "x-suspicious"}
    async with running(config(failures=[rule], challenge=challenge), upstream=upstream) as r:
        for _ in range(3):
            assert (await attempt(r, "127.0.0.10", "x")).status_code == 401
        assert (b"x-suspicious", b"failures;rule=spray") in seen[-1]
        assert not any(name == b"x-suspicious" for name, _ in seen[0])


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"network": "10.1.2.3/24"}, "network: '10.1.2.3/24' has host bits set"),
        ({"address": "not-an-ip"}, "address:"),
        ({"address": "10.0.0.1", "network": "10.0.0.0/8"}, "expected exactly one of"),
        ({"reason": "nothing named"}, "expected exactly one of"),
        ({"action": "nuke", "address": "10.0.0.1"}, "action: expected 'ban'"),
        ({"address": "10.0.0.1", "duration": "soon"}, "duration: expected seconds"),
        ({"address": "10.0.0.1", "duration": -5}, "duration: expected a finite duration > 0"),
        ({"address": "10.0.0.1", "duration": "400w"}, "at most [abuse] max_ban"),
        ({"address": "10.0.0.1", "until": 1}, "until: expected a time in the future"),
        ({"address": "10.0.0.1", "until": "x"}, "until: expected unix seconds"),
        ({"address": "10.0.0.1", "duration": 5, "until": 2e9}, "at most one of duration"),
        ({"action": "limit", "address": "10.0.0.1"}, "rate: expected requests per second"),
        ({"address": "10.0.0.1", "rate": 5}, "rate: only a limit takes a rate"),
        ({"address": "10.0.0.1", "reason": "x" * 201}, "reason: expected at most 200"),
        ({"principal": "nobody"}, "principal: expected a [[clients]] name"),
        ({"address": "10.0.0.1", "by": ""}, "by: expected 1 to 64"),
        ({"address": "10.0.0.1", "extra": 1}, "unknown fields"),
    ],
)
async def test_a_bad_entry_is_a_400_naming_the_field(body: dict[str, Any], error: str) -> None:
    async with running(config(), upstream=LoginApp()) as r:
        response = await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json=body)
        assert error in problem(response, 400, "admin_bad_request")["detail"]


async def test_require_expiry_and_the_policy_file_s_entries_are_enforced_by_the_admin_api() -> None:
    abuse = config(require_expiry=True, ban=[{"address": "192.0.2.1", "expires": _expires()}])
    async with running(abuse, upstream=LoginApp()) as r:
        forever = await r.admin.post(
            "/admin/bans", headers=ADMIN_HEADERS, json={"address": "192.0.2.2"}
        )
        assert "require_expiry" in problem(forever, 400, "admin_bad_request")["detail"]
        file_s = await r.admin.post(
            "/admin/bans/remove", headers=ADMIN_HEADERS, json={"address": "192.0.2.1"}
        )
        assert "in the policy file" in problem(file_s, 400, "admin_bad_request")["detail"]
        listed = (await r.admin.get("/admin/bans?action=ban", headers=ADMIN_HEADERS)).json()
        assert [(e["value"], e["source"]) for e in listed["entries"]] == [("192.0.2.1", "config")]
        bad = await r.admin.get("/admin/bans?kind=galaxy", headers=ADMIN_HEADERS)
        problem(bad, 400, "admin_bad_request")


def _expires() -> Any:
    import datetime

    return datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC)


async def test_a_reload_keeps_the_shared_entries_and_applies_the_file_s(tmp_path: Path) -> None:
    async with running(config(), upstream=LoginApp()) as r:
        await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json={"address": "127.0.0.20"})
        new = config(ban=[{"address": "127.0.0.21", "reason": "from the file"}])
        assert await r.gateway.reload(new)
        for address in ("127.0.0.20", "127.0.0.21"):
            async with r.connect(client=address) as client:
                assert (await client.get("/orders")).status_code == 403
        assert await r.gateway.reload(config())
        async with r.connect(client="127.0.0.21") as client:
            assert (await client.get("/orders")).status_code == 200  # gone with the file


async def test_the_abuse_log_has_a_line_per_decision_with_addresses_truncated(
    tmp_path: Path,
) -> None:
    log = tmp_path / "abuse.jsonl"
    abuse = config(failures=[{**BY_ADDRESS, "threshold": 3}], log=str(log), addresses="truncate")
    async with running(abuse, upstream=LoginApp()) as r:
        for _ in range(4):
            await attempt(r, "127.0.0.77", "alice")
        await r.admin.post(
            "/admin/bans/remove",
            headers=ADMIN_HEADERS,
            json={"address": "127.0.0.77", "reason": "false positive", "by": "oncall"},
        )
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["abuse.threshold", "abuse.added", "abuse.removed"]
    crossed, added, removed = lines
    assert (crossed["count"], crossed["window"], crossed["address"]) == (3, 600.0, "127.0.0.0/24")
    assert (added["subject"], added["offence"], added["source"]) == (
        "127.0.0.0/24",
        1,
        "failures:spray",
    )
    assert (removed["by"], removed["reason"]) == ("oncall", "false positive")
    assert "127.0.0.77" not in log.read_text()
    assert "alice" not in log.read_text()


async def test_a_store_that_fails_while_counting_never_fails_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(config(failures=[{**BY_ADDRESS, "threshold": 1}]), upstream=LoginApp()) as r:
        guard = r.gateway.stack.guard
        assert guard is not None

        async def down(*args: Any) -> Any:
            raise ConnectionError("store down")

        guard.counters.acquire = down  # type: ignore[union-attr, method-assign]
        statuses = [(await attempt(r, "127.0.0.30", "x")).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
    assert caplog.text.count("the store failed") == 1  # once a minute at most


async def test_a_10x_spike_is_caught_within_a_minute_and_tightened() -> None:
    clock, events = ManualClock(T0), []
    anomaly = {
        "warmup": 120,
        "half_life": 600,
        "min_rate": 0.5,
        "seasonal": False,
        "action": "tighten",
        "tighten_to": 2,
    }
    abuse = config(anomaly=anomaly)
    headers = {"X-API-Key": "partner-key-0001"}
    async with running(abuse, upstream=LoginApp(), clock=clock, hooks=[events.append]) as r:

        async def second(requests: int) -> list[httpx.Response]:
            responses = [await r.client.get("/orders", headers=headers) for _ in range(requests)]
            clock.advance(1)
            if int(clock.now()) % 10 == 0:
                await r.gateway.evaluate_anomalies()
            return responses

        for _ in range(600):  # ten minutes at 2 requests a second
            assert [response.status_code for response in await second(2)] == [200, 200]
        assert not of(events, AnomalyStarted)
        spike = clock.now()
        responses: list[httpx.Response] = []
        for _ in range(90):
            responses += await second(20)
        statuses = [response.status_code for response in responses]
        [started] = of(events, AnomalyStarted)
        assert spike < started.at <= spike + 40  # within a minute, as docs/abuse.md says
        assert started.client == hash_credential(b"partner-key-0001")
        assert started.rate > 5 * started.baseline
        assert started.action == "tighten"
        [limit] = [e for e in of(events, EntryAdded) if e.action == "limit"]
        assert 3 <= limit.rate <= 5  # twice its usual 2/s
        assert statuses.count(429) > 0
        assert statuses[:400].count(429) == 0  # the first 20 seconds: not yet an anomaly
        refused = responses[statuses.index(429)]
        problem(refused, 429, "abuse_limit_exceeded")
        assert int(refused.headers["retry-after"]) >= 1


_RULE = '[[abuse.failures]]\nname = "l"\nroutes = ["POST /login"]\nby = "address"\n'


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        (
            '[[abuse.ban]]\nnetwork = "10.1.2.3/24"\n',
            "abuse.ban[0].network: '10.1.2.3/24' has host bits set: did you mean 10.1.2.0/24?",
        ),
        (
            '[[abuse.ban]]\nnetwork = "10.0.0.0/8"\n[[abuse.allow]]\naddress = "10.9.9.9"\n',
            "abuse.ban[0]: overlaps [[abuse.allow]] number 1 (10.9.9.9)",
        ),
        (
            '[abuse]\nrequire_expiry = true\n[[abuse.ban]]\naddress = "192.0.2.1"\n',
            "abuse.ban[0].expires: required",
        ),
        (
            '[[abuse.ban]]\naddress = "192.0.2.1"\nnetwork = "192.0.2.0/24"\n',
            "abuse.ban[0]: expected exactly one of",
        ),
        (
            '[[abuse.ban]]\naddress = "192.0.2.1"\nexpires = 2027-01-01T00:00:00\n',
            "abuse.ban[0].expires: expected a date and time with its offset",
        ),
        (
            _RULE + "threshold = 0\n",
            "abuse.failures[0].threshold: expected a whole number of failures from 1 to 1000, "
            "got 0",
        ),
        (_RULE + "window = -1\n", "abuse.failures[0].window: expected seconds from 1 to 86400"),
        (
            _RULE.replace('"address"', '"account"'),
            "abuse.failures[0].account: required with by = 'account'",
        ),
        (_RULE + 'account = "cookie:x"\n', "abuse.failures[0].account: expected 'json:FIELD'"),
        (
            _RULE + "challenge_after = 9\n",
            "abuse.failures[0].challenge_after: expected fewer failures than threshold (5)",
        ),
        (
            _RULE + "challenge_after = 2\n",
            "abuse.failures[0].challenge_after: expected an [abuse.challenge] table",
        ),
        (
            _RULE + "statuses = [99]\n",
            "abuse.failures[0].statuses: expected HTTP status codes from 100 to 599, got 99",
        ),
        (
            _RULE + 'statuses = ["4XX"]\n',
            "abuse.failures[0].statuses: expected a status class such as '4xx', got '4XX'",
        ),
        (
            _RULE + "ban = 600\nban_max = 60\n",
            "abuse.failures[0].ban_max: expected at least ban (600)",
        ),
        (
            _RULE + "window = 600\nforget_after = 60\n",
            "abuse.failures[0].forget_after: expected at least window (600)",
        ),
        (
            _RULE.replace('"l"', '"a b"'),
            "abuse.failures[0].name: expected letters, digits",
        ),
        (
            "[abuse.anomaly]\nwindow = 60\nstep = 7\n",
            "abuse.anomaly.step: expected a divisor of window (60)",
        ),
        (
            '[abuse.anomaly]\naction = "challenge"\n',
            "abuse.anomaly.action: expected an [abuse.challenge] table",
        ),
        (
            '[abuse.challenge]\naction = "refuse"\n',
            "abuse.challenge.url: required with action = 'refuse'",
        ),
        ('[abuse]\nstore = "elsewhere"\n', "abuse.store: expected a name from [stores]"),
    ],
)
def test_a_bad_abuse_table_is_refused_naming_its_line_and_field(
    tmp_path: Path, toml: str, error: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[upstream]\nurl = "http://127.0.0.1:9"\n[admin]\ntoken = "t"\n' + toml)
    with pytest.raises(ConfigurationError) as raised:
        load_config(str(path))
    assert f"{path}:" in str(raised.value)
    assert error in str(raised.value)


def test_the_cli_adds_lists_and_removes_entries_in_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.toml"
    log = tmp_path / "abuse.jsonl"
    store = tmp_path / "gw.db"
    path.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n[admin]\ntoken = "t"\n'
        f'[stores]\ndefault = "sqlite:///{store}"\n[abuse]\nlog = "{log}"\n'
        '[[abuse.allow]]\nnetwork = "10.0.0.0/8"\nreason = "office"\n'
    )
    _create(f"sqlite:///{store}")
    runner = CliRunner()
    monkeypatch.setenv("LEAKED_KEY", "sk_live_leaked_0001")

    def run(*args: str) -> Any:
        return runner.invoke(main, ["bans", *args, "--config", str(path)])

    added = run("add", "--address", "198.51.100.7", "--for", "2h", "--reason", "scanner")
    assert added.exit_code == 0, added.output
    assert "ban address 198.51.100.7: until" in added.output
    keyed = run("add", "--key-env", "LEAKED_KEY", "--reason", "leaked in a repo")
    assert keyed.exit_code == 0
    assert "sk_live" not in keyed.output
    listed = run("list", "--json")
    assert listed.exit_code == 0, listed.output
    entries = json.loads(listed.output)
    assert {(e["action"], e["kind"], e["source"]) for e in entries} == {
        ("ban", "address", "admin"),
        ("ban", "principal", "admin"),
        ("allow", "network", "config"),
    }
    bad = run("add", "--network", "10.1.2.3/24")
    assert bad.exit_code == 2
    assert "host bits set" in bad.output
    removed = run("remove", "--address", "198.51.100.7", "--reason", "done")
    assert removed.exit_code == 0
    assert "removed" in removed.output
    assert run("remove", "--address", "198.51.100.7").exit_code == 1
    assert [json.loads(line)["event"] for line in log.read_text().splitlines()] == [
        "abuse.added",
        "abuse.added",
        "abuse.removed",
    ]
    assert "sk_live" not in log.read_text()


def _create(url: str) -> None:
    """The store's database, as ``surefoot serve`` leaves it (the CLI opens no new one)."""

    async def create() -> None:
        store = store_from_url(url)
        await store.board_read("abuse:stamps", T0)
        await store.aclose()

    asyncio.run(create())


async def test_a_lifted_ban_is_kept_as_history_and_the_next_offence_bans_longer() -> None:
    login, clock = LoginApp(), ManualClock(T0)
    rule = {**BY_ADDRESS, "threshold": 3, "ban": 60}
    async with running(config(failures=[rule]), upstream=login, clock=clock) as r:
        statuses = [(await attempt(r, "127.0.0.66", "x")).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 403]
        lifted = await r.admin.post(
            "/admin/bans/remove", headers=ADMIN_HEADERS, json={"address": "127.0.0.66"}
        )
        assert lifted.status_code == 200
        clock.advance(1)
        before = login.attempts
        statuses = [(await attempt(r, "127.0.0.66", "x")).status_code for _ in range(50)]
        # The failures before the ban do not count again, and the next ban comes.
        assert statuses == [401] * 3 + [403] * 47
        assert login.attempts - before == 3
        [entry] = (await r.admin.get("/admin/bans", headers=ADMIN_HEADERS)).json()["entries"]
        assert (entry["offence"], entry["until"] - entry["at"]) == (2, 120)


async def test_a_login_padded_past_the_bound_or_naming_two_accounts_is_refused() -> None:
    login = LoginApp()
    rules = [
        {**BY_ACCOUNT, "threshold": 3},
        {**BY_ACCOUNT, "name": "form", "account": "form:login"},
    ]
    async with running(config(failures=rules), upstream=login) as r:
        for i in range(4):
            await attempt(r, f"127.0.1.{i + 1}", "alice")
        padded = {"username": "alice", "password": "x", "pad": " " * 70_000}
        async with r.connect(client="127.0.2.1") as client:
            too_large = await client.post("/login", json=padded)
            problem(too_large, 413, "request_body_too_large")
            twice = await client.post(
                "/login", content=b'{"username": "decoy", "username": "alice", "password": "x"}'
            )
            assert "json:username" in problem(twice, 400, "account_ambiguous")["detail"]
            form = await client.post(
                "/login",
                content=b"login=decoy&login=victim",
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            problem(form, 400, "account_ambiguous")
        assert login.attempts == 3


@pytest.mark.parametrize("field", ["duration", "until"])
async def test_a_huge_number_is_a_400(field: str) -> None:
    async with running(config(), upstream=LoginApp()) as r:
        body = b'{"address": "10.1.2.3", "' + field.encode() + b'": 1' + b"0" * 400 + b"}"
        response = await r.admin.post(
            "/admin/bans",
            headers={**ADMIN_HEADERS, "content-type": "application/json"},
            content=body,
        )
        assert field in problem(response, 400, "admin_bad_request")["detail"]


async def test_with_a_secret_accounts_and_addresses_are_hashed_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABUSE_HASH_KEY", "k" * 32)
    log = tmp_path / "abuse.jsonl"
    abuse = config(
        hash_key_env="ABUSE_HASH_KEY",
        addresses="hash",
        log=str(log),
        failures=[{**BY_ACCOUNT, "threshold": 1}],
        ban=[{"account": "bob"}],
    )
    async with running(abuse, upstream=LoginApp()) as r:
        await attempt(r, "127.0.0.40", "alice")
        assert (await attempt(r, "127.0.0.41", "bob", "hunter2-but-longer")).status_code == 403
    text = log.read_text()
    assert account_hash("alice", b"k" * 32) in text
    assert account_hash("alice") not in text
    assert "127.0.0.40" not in text
    assert shown("address", "127.0.0.40", "hash") not in text  # keyed, not the bare hash
    with pytest.raises(ConfigurationError, match=r"abuse\.hash_key_env: the environment variable"):
        config(hash_key_env="NOT_SET_ANYWHERE")


async def test_a_client_s_own_suspicion_header_never_reaches_the_upstream() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []
    login = LoginApp()

    async def upstream(scope: Any, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        await login(scope, receive, send)

    challenge = {"action": "header"}
    async with running(config(challenge=challenge), upstream=upstream) as r:
        await r.client.get("/orders", headers={"surefoot-suspicion": "none, trust me"})
    assert not any(name == b"surefoot-suspicion" for name, _ in seen[0])


async def test_an_anomaly_never_replaces_an_operator_s_entry() -> None:
    clock, events = ManualClock(T0), []
    anomaly = {"warmup": 0, "sustain": 0, "min_rate": 0.1, "seasonal": False, "action": "tighten"}
    headers = {"X-API-Key": "partner-key-0002"}
    async with running(
        config(anomaly=anomaly), upstream=LoginApp(), clock=clock, hooks=[events.append]
    ) as r:
        limit = {"action": "limit", "key": "partner-key-0002", "rate": 100, "reason": "contract"}
        assert (
            await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json=limit)
        ).status_code == 201
        for _ in range(12):  # two minutes at one request every ten seconds
            await r.client.get("/orders", headers=headers)
            clock.advance(10)
            await r.gateway.evaluate_anomalies()
        for _ in range(60):
            await r.client.get("/orders", headers=headers)
        clock.advance(10)
        await r.gateway.evaluate_anomalies()
        assert of(events, AnomalyStarted)  # seen and reported...
        [entry] = (await r.admin.get("/admin/bans", headers=ADMIN_HEADERS)).json()["entries"]
        assert (entry["source"], entry["rate"], entry["until"]) == ("admin", 100, None)  # ...kept


async def test_a_full_store_is_a_507_naming_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    import surefoot.storage.memory as memory
    from surefoot.abuse import Action, Entry, Kind
    from surefoot.abuse._shared import shard_of

    monkeypatch.setattr(memory, "MAX_SLOTS", 1)

    def slot(address: str) -> str:
        return Entry(action=Action.BAN, kind=Kind.ADDRESS, value=address, until=math.inf).slot

    first = "203.0.113.7"
    second = next(
        address
        for address in (f"198.51.{i // 256}.{i % 256}" for i in range(1, 60_000))
        if shard_of(slot(address)) == shard_of(slot(first))
    )
    async with running(config(), upstream=LoginApp()) as r:
        ok = await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json={"address": first})
        assert ok.status_code == 201
        full = await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json={"address": second})
        assert "forget_after" in problem(full, 507, "abuse_entries_full")["detail"]


async def test_the_entries_in_force_are_counted_when_scraped() -> None:
    async with running(config(allow=[{"network": "10.0.0.0/8"}]), upstream=LoginApp()) as r:
        await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json={"address": "192.0.2.1"})
        scraped = (await r.admin.get("/metrics", headers=ADMIN_HEADERS)).text
        assert 'surefoot_abuse_entries{action="ban",kind="address"} 1.0' in scraped
        assert 'surefoot_abuse_entries{action="allow",kind="network"} 1.0' in scraped
        assert 'surefoot_abuse_entries_added_total{action="ban",source="admin"} 1.0' in scraped


async def test_odd_logins_never_answer_500_and_a_banned_account_stays_refused() -> None:
    form = {**BY_ACCOUNT, "name": "form", "account": "form:username", "threshold": 50}
    abuse = config(failures=[BY_ACCOUNT, form], ban=[{"account": "alice"}])
    async with running(abuse, upstream=LoginApp()) as r, r.connect(client="127.0.3.1") as client:
        deep = await client.post("/login", content=b"[" * 60_000)
        assert deep.status_code == 400  # the upstream's: the guard read no account
        lone = await client.post("/login", content=b'{"username": "\\ud800", "password": "x"}')
        assert lone.status_code in (400, 401)
        for padding in (b"&" * 1000, b"&z=\xff"):
            padded = await client.post(
                "/login",
                content=b"username=alice&password=x" + padding,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            problem(padded, 403, "access_denied")


async def test_a_rule_holds_for_the_method_a_request_overrides_too() -> None:
    abuse = gateway_config(
        routes=LOGIN,
        server={"allow_method_override": True},
        abuse={"ban": [{"account": "alice"}], "failures": [BY_ACCOUNT]},
    )
    async with running(abuse, upstream=LoginApp()) as r:
        overridden = await r.client.post(
            "/login", json=RIGHT_ALICE, headers={"X-HTTP-Method-Override": "PUT"}
        )
        problem(overridden, 403, "access_denied")


RIGHT_ALICE = {"username": "alice", "password": "correct horse battery staple"}


async def test_an_allowed_account_is_never_counted() -> None:
    rules = [{**BY_ADDRESS, "threshold": 2}, {**BY_ACCOUNT, "threshold": 2}]
    abuse = config(failures=rules, allow=[{"account": "alice"}])
    async with running(abuse, upstream=LoginApp()) as r:
        statuses = [(await attempt(r, "127.0.3.2", "alice")).status_code for _ in range(5)]
        assert statuses == [401] * 5


async def test_a_challenge_holds_beside_a_limit_on_the_same_subject() -> None:
    challenge = {"url": "https://example.com/verify"}
    async with running(config(challenge=challenge), upstream=LoginApp()) as r:
        for body in (
            {"action": "challenge", "address": "127.0.3.3"},
            {"action": "limit", "address": "127.0.3.3", "rate": 100},
        ):
            assert (
                await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json=body)
            ).status_code == 201
        async with r.connect(client="127.0.3.3") as client:
            problem(await client.get("/orders"), 429, "challenge_required")


async def test_removing_a_client_s_entries_is_all_or_nothing() -> None:
    clients = [{"name": "acme", "api_key": "acme-key-0001", "address": "127.0.3.4"}]
    abuse = gateway_config(
        routes=LOGIN, clients=clients, abuse={"ban": [{"principal": "addr:127.0.3.4"}]}
    )
    async with running(abuse, upstream=LoginApp()) as r:
        added = await r.admin.post(
            "/admin/bans", headers=ADMIN_HEADERS, json={"key": "acme-key-0001"}
        )
        assert added.status_code == 201
        refused = await r.admin.post(
            "/admin/bans/remove", headers=ADMIN_HEADERS, json={"principal": "acme"}
        )
        problem(refused, 400, "admin_bad_request")
        still = await r.client.get("/orders", headers={"X-API-Key": "acme-key-0001"})
        problem(still, 403, "access_denied")  # nothing was lifted


async def test_a_challenge_needs_somewhere_to_send_the_client() -> None:
    async with running(config(), upstream=LoginApp()) as r:
        body = {"action": "challenge", "address": "127.0.3.5"}
        response = await r.admin.post("/admin/bans", headers=ADMIN_HEADERS, json=body)
        assert "[abuse.challenge]" in problem(response, 400, "admin_bad_request")["detail"]
