"""The gateway's own alerting (``[alerts] evaluate``): the rules ``surefoot alerts
--prometheus`` writes, evaluated in each worker, listed in the admin API, sent once to a
Slack-compatible webhook whatever the number of workers, and muted by silences shared
through the store (set from the admin API or the CLI)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from _gateway_helpers import ADMIN_HEADERS, EchoUpstream, gateway_config, problem, running
from click.testing import CliRunner

from _support import T0
from surefoot.cli import main
from surefoot.errors import ConfigurationError
from surefoot.gateway import AlertWatcher, Gateway
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

HOOK = "https://hooks.example.test/T000/B000/secret-part"
#: Fires on the next evaluation: no hold, one group per breaker.
ALERTS = {
    "breaker_open_for": 0,
    "group_wait": 0,
    "group_interval": 60,
    "repeat_interval": 3600,
    "webhook_url": HOOK,
}


class Hook:
    """The webhook: every JSON body posted to it."""

    def __init__(self, status: int = 200) -> None:
        self.posted: list[dict[str, Any]] = []
        self.status = status

    def transport(self) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            assert str(request.url) == HOOK
            self.posted.append(json.loads(request.content))
            return httpx.Response(self.status)

        return httpx.MockTransport(answer)


def watcher_of(gateway: Gateway, hook: Hook, clock: ManualClock) -> AlertWatcher:
    """A watcher like the gateway's own, whose webhook client posts to ``hook``."""
    board = gateway.watcher.board
    return AlertWatcher(
        gateway.metrics, board, gateway.stack.config, clock=clock, transport=hook.transport()
    )


async def test_an_open_breaker_fires_and_is_sent_once_by_one_of_two_workers(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    config = gateway_config(alerts=ALERTS, stores={"default": f"sqlite:///{tmp_path / 'gw.db'}"})
    hook = Hook()
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        workers = [watcher_of(gw.gateway, hook, clock) for _ in range(2)]
        gw.gateway.metrics.set_breaker_state("upstream", "open")
        for watcher in workers:
            await watcher.step()
        assert [a.name for a in workers[0].alerts] == ["SurefootBreakerOpen"]
        assert len(hook.posted) == 1
        text = hook.posted[0]["text"]
        assert "FIRING" in text
        assert "SurefootBreakerOpen" in text
        assert "blocks" in hook.posted[0]
        # Unchanged: nothing more until repeat_interval, then once again.
        clock.advance(120)
        for watcher in workers:
            await watcher.step()
        assert len(hook.posted) == 1
        clock.advance(3600)
        for watcher in workers:
            await watcher.step()
        assert len(hook.posted) == 2
        # Closed: one resolved notification.
        gw.gateway.metrics.set_breaker_state("upstream", "closed")
        clock.advance(60)
        for watcher in workers:
            await watcher.step()
        assert len(hook.posted) == 3
        assert "RESOLVED" in hook.posted[2]["text"]
        for watcher in workers:
            await watcher.aclose()


async def test_a_silence_set_through_the_admin_api_mutes_the_alert() -> None:
    clock = ManualClock(T0)
    hook = Hook()
    async with running(gateway_config(alerts=ALERTS), upstream=EchoUpstream(), clock=clock) as gw:
        watcher = watcher_of(gw.gateway, hook, clock)
        gw.gateway.watcher = watcher
        response = await gw.admin.post(
            "/admin/silences",
            headers=ADMIN_HEADERS,
            json={
                "matchers": [{"name": "alertname", "op": "=", "value": "SurefootBreakerOpen"}],
                "duration": "1h",
                "comment": "upstream maintenance",
                "created_by": "ops",
            },
        )
        assert response.status_code == 201, response.text
        silence = response.json()["id"]
        gw.gateway.metrics.set_breaker_state("upstream", "open")
        await watcher.step()
        assert hook.posted == []
        listed = (await gw.admin.get("/admin/alerts", headers=ADMIN_HEADERS)).json()["alerts"]
        assert [(a["alertname"], a["state"], a["silenced_by"]) for a in listed] == [
            ("SurefootBreakerOpen", "firing", [silence])
        ]
        assert listed[0]["runbook_url"].endswith("#surefootbreakeropen")
        assert "upstream" in listed[0]["summary"]
        # Expired: the alert is sent at the next evaluation.
        response = await gw.admin.delete(f"/admin/silences/{silence}", headers=ADMIN_HEADERS)
        assert response.json()["expired"] is True
        clock.advance(15)
        await watcher.step()
        assert len(hook.posted) == 1
        await watcher.aclose()


def test_a_silence_set_from_the_cli_is_seen_by_the_gateway(tmp_path: Path) -> None:
    database = tmp_path / "gw.db"
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n\n'
        f'[stores]\ndefault = "sqlite:///{database}"\n\n[admin]\ntoken = "t"\n'
    )
    config = gateway_config(stores={"default": f"sqlite:///{database}"})

    async def seen() -> list[tuple[str, str, str]]:
        async with running(config, upstream=EchoUpstream()) as gw:
            silences = await gw.gateway.watcher.read_silences()
        return [(s.id, s.created_by, s.comment) for s in silences]

    assert asyncio.run(seen()) == []  # made the database file
    runner = CliRunner()
    added = runner.invoke(
        main,
        ["silences", "add", "--config", str(path), "--match", "policy=~part.*",
         "--match", "severity!=critical", "--for", "2h", "--comment", "campaign", "--by", "ops"],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    silence_id = added.output.split(":")[0]
    assert asyncio.run(seen()) == [(silence_id, "ops", "campaign")]
    listed = runner.invoke(main, ["silences", "list", "--config", str(path), "--json"])
    assert json.loads(listed.output)[0]["matchers"] == [
        {"name": "policy", "op": "=~", "value": "part.*"},
        {"name": "severity", "op": "!=", "value": "critical"},
    ]
    expired = runner.invoke(main, ["silences", "expire", "--config", str(path), silence_id])
    assert expired.exit_code == 0, expired.output
    gone = runner.invoke(main, ["silences", "expire", "--config", str(path), "nope"])
    assert gone.exit_code == 1
    assert "no silence 'nope'" in gone.output
    wrong = runner.invoke(
        main,
        ["silences", "add", "--config", str(path), "--match", "x", "--for", "1h", "--comment", "c"],
    )
    assert wrong.exit_code == 2
    assert "expected name=value" in wrong.output


async def test_a_webhook_that_fails_is_logged_and_the_gateway_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(T0)
    hook = Hook(status=500)
    async with running(gateway_config(alerts=ALERTS), upstream=EchoUpstream(), clock=clock) as gw:
        watcher = watcher_of(gw.gateway, hook, clock)
        gw.gateway.metrics.set_breaker_state("upstream", "open")
        await watcher.step()
        assert len(hook.posted) == 1
        assert "the webhook answered 500" in caplog.text
        assert HOOK not in caplog.text
        await watcher.aclose()


async def test_without_evaluation_nothing_fires_but_the_charts_are_kept() -> None:
    clock = ManualClock(T0)
    config = gateway_config(alerts={**ALERTS, "evaluate": False})
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        gw.gateway.metrics.set_breaker_state("upstream", "open")
        for _ in range(3):
            await gw.client.get("/a")
            await gw.gateway.watcher.step()
            clock.advance(15)
        alerts = (await gw.admin.get("/admin/alerts", headers=ADMIN_HEADERS)).json()
        assert alerts == {"evaluated": False, "alerts": []}
        charts = (await gw.admin.get("/admin/series?range=15m", headers=ADMIN_HEADERS)).json()
        assert charts["step"] == 15
        requests = [v for v in charts["series"]["requests"]["2xx"] if v is not None]
        assert requests == [1 / 15, 1 / 15]
        assert [v for v in charts["series"]["breakers"]["upstream"] if v is not None] == [2] * 3


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"matchers": [], "duration": "1h", "comment": "c"}, "matchers: expected 1 to 32"),
        (
            {
                "matchers": [{"name": "a", "op": "=~", "value": ".*"}],
                "duration": "1h",
                "comment": "c",
            },
            "does not match the empty string",
        ),
        (
            {
                "matchers": [{"name": "a", "op": "=", "value": "b"}],
                "duration": "2y",
                "comment": "c",
            },
            "duration: expected",
        ),
        ({"matchers": [{"name": "a", "op": "=", "value": "b"}], "comment": "c"}, "one of ends_at"),
        ({"matchers": [{"name": "a", "op": "=", "value": "b"}], "duration": "1h"}, "comment"),
        ({"matchers": "a=b", "duration": "1h", "comment": "c"}, "matchers: expected a list"),
        ({"matchers": [], "until": 5}, "unknown fields"),
    ],
)
async def test_a_wrong_silence_is_a_400_naming_the_field(body: dict[str, Any], reason: str) -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        response = await gw.admin.post("/admin/silences", headers=ADMIN_HEADERS, json=body)
        assert reason in problem(response, 400, "admin_bad_request")["detail"]


async def test_unknown_silences_and_ranges_are_refused() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        response = await gw.admin.delete("/admin/silences/nope", headers=ADMIN_HEADERS)
        problem(response, 404, "admin_not_found")
        response = await gw.admin.get("/admin/silences/nope", headers=ADMIN_HEADERS)
        problem(response, 404, "admin_not_found")
        response = await gw.admin.get("/admin/series?range=2d", headers=ADMIN_HEADERS)
        assert "range: expected one of 15m" in problem(response, 400, "admin_bad_request")["detail"]
        response = await gw.admin.get("/admin/alerts")
        problem(response, 401, "admin_unauthorized")


async def test_the_dashboard_page_needs_no_token_and_holds_no_data() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        page = await gw.admin.get("/admin/dashboard")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "admin-token" not in page.text
        script = await gw.admin.get("/admin/dashboard/uplot.min.js")
        assert script.status_code == 200
        missing = await gw.admin.get("/admin/dashboard/admin.py")
        problem(missing, 404, "admin_not_found")


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"webhook_url": "ftp://x"}, "alerts.webhook_url"),
        ({"group_by": ["not a label"]}, "alerts.group_by"),
        ({"repeat_interval": 10}, "alerts.repeat_interval"),
        ({"store": "elsewhere"}, "alerts.store"),
        ({"webhook_url_env": "SUREFOOT_TEST_NO_SUCH_VARIABLE"}, "alerts.webhook_url_env"),
    ],
)
def test_bad_alert_settings_are_refused_naming_the_field(table: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")) as raised:
        gateway_config(alerts=table)
    assert "ftp://x" not in str(raised.value) or field == "alerts.webhook_url"


async def test_the_webhook_url_is_a_secret_in_the_admin_api() -> None:
    async with running(gateway_config(alerts=ALERTS), upstream=EchoUpstream()) as gw:
        shown = (await gw.admin.get("/admin/config", headers=ADMIN_HEADERS)).text
        assert "secret-part" not in shown


async def test_a_worker_started_while_an_alert_fires_does_not_send_it_again() -> None:
    clock = ManualClock(T0)
    hook = Hook()
    async with running(gateway_config(alerts=ALERTS), upstream=EchoUpstream(), clock=clock) as gw:
        first = watcher_of(gw.gateway, hook, clock)
        gw.gateway.metrics.set_breaker_state("upstream", "open")
        await first.step()
        assert len(hook.posted) == 1
        clock.advance(600)  # past group_interval: the claim has expired, the log has not
        late = watcher_of(gw.gateway, hook, clock)
        await late.step()
        await first.step()
        assert len(hook.posted) == 1
        clock.advance(3600)  # repeat_interval: sent again, once
        await late.step()
        await first.step()
        assert len(hook.posted) == 2
        for watcher in (first, late):
            await watcher.aclose()


@pytest.mark.parametrize(
    ("times", "reason"),
    [
        ({"ends_at": 10**400}, "ends_at: expected a finite number"),
        ({"duration": "2h", "starts_at": 10**400}, "starts_at: expected a finite number"),
        ({"ends_at": 1e300}, "ends_at: expected at most a year after starts_at"),
        ({"duration": "400d"}, "ends_at: expected at most a year"),
        ({"duration": "1h", "starts_at": 0}, "starts_at: expected a time within a year of now"),
        ({"duration": "soon"}, "duration: expected seconds or a duration"),
    ],
)
async def test_a_silence_lasts_at_most_a_year(times: dict[str, Any], reason: str) -> None:
    body = {"matchers": [{"name": "a", "op": "=", "value": "b"}], "comment": "c", **times}
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        response = await gw.admin.post("/admin/silences", headers=ADMIN_HEADERS, json=body)
        assert reason in problem(response, 400, "admin_bad_request")["detail"]


def test_a_repeat_sooner_than_the_group_interval_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"alerts\.repeat_interval") as raised:
        gateway_config(alerts={"group_interval": 7200, "repeat_interval": 3600})
    assert "at least group_interval" in str(raised.value)
    with pytest.raises(ConfigurationError, match="each label name once"):
        gateway_config(alerts={"group_by": ["alertname", "alertname"]})


def test_the_cli_refuses_a_memory_store_for_silences(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n\n[stores]\ndefault = "memory://"\n\n'
        '[admin]\ntoken = "t"\n'
    )
    result = CliRunner().invoke(main, ["silences", "list", "--config", str(path)])
    assert result.exit_code == 2
    assert "memory:// store" in result.output


async def test_unknown_keys_are_counted_without_lookups() -> None:
    """The gateway's default for a 5xx is ``unknown``; without a lookup nothing settles
    it, and the count that ``SurefootOutcomesUnknown`` reads is kept all the same."""
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:

        async def unknown_keys() -> float:
            body = (await gw.admin.get("/metrics", headers=ADMIN_HEADERS)).text
            line = next(
                x for x in body.splitlines() if x.startswith("surefoot_idempotency_unknown_keys ")
            )
            return float(line.split()[-1])

        await gw.gateway.count_unknown()  # nothing seen: the store is not read
        response = await gw.client.post(
            "/charges/status/500", headers={"Idempotency-Key": "k-1"}, json={"amount": 1}
        )
        assert response.status_code == 502  # the upstream's 5xx, hidden
        assert await unknown_keys() == 0
        await gw.gateway.count_unknown()  # one pass of the loop startup runs
        assert await unknown_keys() == 1


async def test_an_alert_that_fires_again_after_it_resolved_is_sent_again() -> None:
    """Without send_resolved nothing marks the end of the first firing; the second is a
    new group all the same, and the log of what was sent must not swallow it."""
    clock = ManualClock(T0)
    hook = Hook()
    config = gateway_config(alerts={**ALERTS, "send_resolved": False})
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        watcher = watcher_of(gw.gateway, hook, clock)
        clock.advance(1)
        gw.gateway.metrics.set_breaker_state("upstream", "open")
        await watcher.step()
        gw.gateway.metrics.set_breaker_state("upstream", "closed")
        clock.advance(120)
        await watcher.step()
        gw.gateway.metrics.set_breaker_state("upstream", "open")
        clock.advance(600)
        await watcher.step()
        assert len(hook.posted) == 2
        await watcher.aclose()


async def test_the_top_lists_are_evaluated_on_their_latest_values_only() -> None:
    """A series per client would grow the day-long history with every client that ever
    reached a top list: they are kept for their latest value."""
    clock = ManualClock(T0)
    config = gateway_config(rate_limit={"policies": [{"name": "p", "limits": ["1/minute"]}]})
    async with running(config, upstream=EchoUpstream(), clock=clock) as gw:
        watcher = gw.gateway.watcher
        assert [rule.alert for rule in watcher.rules_latest] == ["SurefootClientRefusalsSpike"]
        for minute in range(3):
            for _ in range(2):
                await gw.connect(client=f"198.51.100.{minute}").get("/a")
            assert gw.gateway.top is not None
            await gw.gateway.top.flush()
            clock.advance(60)
            await watcher.step()
        names = {
            name for _, values in watcher.samples.snapshots(T0, clock.now()) for name, _ in values
        }
        assert "surefoot_top_requests" not in names
        latest = {labels for (name, labels) in watcher.latest.latest(clock.now())}
        assert len(latest) <= 2 * 3 * 2  # at most 2 snapshots of the 3 clients' two windows
