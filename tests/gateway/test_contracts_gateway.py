"""Deprecation, sunset, brownouts and versions in the gateway, in process, with injected time
(real processes sharing one store: ``test_contracts_serve.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import http_sf
import pytest
from _gateway_helpers import ADMIN_HEADERS, gateway_config, problem, running

from surefoot.contracts import DeprecatedCalled, VersionPinned
from surefoot.errors import ConfigurationError
from surefoot.gateway import GatewayConfig, load_config
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

JAN, FEB, MAR, JUN = (datetime(2027, m, 1, tzinfo=UTC) for m in (1, 2, 3, 6))
KEYS = {"acme": "k-acme-0001", "legacy": "k-legacy-0001", "bank": "k-bank-0001"}
CLIENTS = [
    {"name": "acme", "api_key": KEYS["acme"]},
    {"name": "legacy", "api_key": KEYS["legacy"], "version": "2024-01-15"},
    {"name": "bank", "api_key": KEYS["bank"], "critical": True},
]
DEPRECATION = {
    "deprecated": JAN,
    "sunset": JUN,
    "link": "https://docs.example.com/migrate-orders",
    "replacement": "GET /v2/orders",
    "extensions": {"bank": datetime(2027, 9, 1, tzinfo=UTC)},
    "brownouts": [{"start": MAR, "duration": 600}],
}
VERSIONS = {"dates": ["2024-01-15", "2025-03-10", "2026-06-01"]}


class Upstream:
    """Answers 200 with the version the gateway forwarded; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        version = dict(scope["headers"]).get(b"surefoot-version", b"none")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": version})


def config(**extra: Any) -> GatewayConfig:
    tables: dict[str, Any] = {
        "clients": CLIENTS,
        "routes": [
            {"match": "GET /v1/orders", "deprecation": DEPRECATION},
            {"match": "GET /v2/orders"},
        ],
        "versions": VERSIONS,
    }
    return gateway_config(**{**tables, **extra})


def key(name: str) -> dict[str, str]:
    return {"x-api-key": KEYS[name]}


async def test_a_deprecated_route_announces_itself_then_answers_410_after_its_sunset() -> None:
    upstream, clock, events = Upstream(), ManualClock(FEB.timestamp()), []
    async with running(config(), upstream=upstream, clock=clock, hooks=[events.append]) as r:
        ok = await r.client.get("/v1/orders", headers=key("acme"))
        assert ok.status_code == 200
        deprecation = http_sf.parse(ok.headers["deprecation"].encode(), tltype="item")
        assert deprecation == (JAN, {})  # an RFC 9651 Date item
        assert parsedate_to_datetime(ok.headers["sunset"]) == JUN
        assert '<https://docs.example.com/migrate-orders>; rel="deprecation"' in ok.headers["link"]
        assert 'rel="sunset"' in ok.headers["link"]
        current = await r.client.get("/v2/orders", headers=key("acme"))
        assert "deprecation" not in current.headers
        assert "sunset" not in current.headers

        clock.set(JUN.timestamp())  # the sunset instant: retired
        gone = await r.client.get("/v1/orders", headers=key("acme"))
        body = problem(gone, 410, "route_retired")
        assert body["replacement"] == "GET /v2/orders"
        assert body["link"] == "https://docs.example.com/migrate-orders"
        assert body["sunset"] == "2027-06-01T00:00:00Z"
        assert body["brownout"] is False
        assert "GET /v2/orders" in body["detail"]
        assert gone.headers["deprecation"]  # still announced on the refusal
        calls = upstream.calls
        extended = await r.client.get("/v1/orders", headers=key("bank"))
        assert extended.status_code == 200  # its extension runs to September
        assert parsedate_to_datetime(extended.headers["sunset"]).month == 9
        assert upstream.calls == calls + 1
    phases = [(e.client, e.phase) for e in events if isinstance(e, DeprecatedCalled)]
    assert phases == [("acme", "deprecated"), ("acme", "retired"), ("bank", "deprecated")]


async def test_a_brownout_answers_as_the_sunset_will_but_never_for_a_critical_client() -> None:
    upstream, clock = Upstream(), ManualClock(MAR.timestamp() - 1)
    async with running(config(), upstream=upstream, clock=clock) as r:
        assert (await r.client.get("/v1/orders", headers=key("acme"))).status_code == 200
        clock.advance(1)  # the window opens
        browned = await r.client.get("/v1/orders", headers=key("acme"))
        body = problem(browned, 410, "route_retired")
        assert body["brownout"] is True
        assert "brownout" in body["detail"]
        assert (await r.client.get("/v1/orders", headers=key("bank"))).status_code == 200
        clock.advance(599.9)
        assert (await r.client.get("/v1/orders", headers=key("acme"))).status_code == 410
        clock.advance(0.1)  # [start, end): the window has closed
        assert (await r.client.get("/v1/orders", headers=key("acme"))).status_code == 200


async def test_brownouts_reach_critical_clients_when_the_file_says_so() -> None:
    deprecation = {**DEPRECATION, "brownout_critical": True}
    routes = [{"match": "GET /v1/orders", "deprecation": deprecation}]
    clock = ManualClock(MAR.timestamp() + 60)
    async with running(config(routes=routes), upstream=Upstream(), clock=clock) as r:
        assert (await r.client.get("/v1/orders", headers=key("bank"))).status_code == 410


async def test_a_deprecation_for_some_clients_leaves_the_others_alone() -> None:
    deprecation = {**DEPRECATION, "clients": ["legacy"], "extensions": {}}
    routes = [{"match": "GET /v1/orders", "deprecation": deprecation}]
    clock = ManualClock(JUN.timestamp() + 1)
    async with running(config(routes=routes), upstream=Upstream(), clock=clock) as r:
        other = await r.client.get("/v1/orders", headers=key("acme"))
        assert other.status_code == 200
        assert "deprecation" not in other.headers
        assert (await r.client.get("/v1/orders")).status_code == 200  # anonymous: not listed
        problem(await r.client.get("/v1/orders", headers=key("legacy")), 410, "route_retired")


async def test_versions_are_pinned_at_first_use_and_a_header_overrides_them_per_request(
    tmp_path: Path,
) -> None:
    store = f"sqlite:///{tmp_path / 'gw.db'}"
    cfg = config(stores={"default": store})
    upstream, clock, events = Upstream(), ManualClock(FEB.timestamp()), []
    async with running(cfg, upstream=upstream, clock=clock, hooks=[events.append]) as r:
        first = await r.client.get(
            "/v2/orders", headers={**key("acme"), "surefoot-version": "2025-03-10"}
        )
        assert first.text == "2025-03-10"
        assert first.headers["surefoot-version"] == "2025-03-10"
        later = await r.client.get("/v2/orders", headers=key("acme"))
        assert later.text == "2025-03-10"  # pinned to its first version, not the latest
        override = await r.client.get(
            "/v2/orders", headers={**key("acme"), "surefoot-version": "2026-06-01"}
        )
        assert override.text == "2026-06-01"
        assert (await r.client.get("/v2/orders", headers=key("acme"))).text == "2025-03-10"
        assert (await r.client.get("/v2/orders", headers=key("legacy"))).text == "2024-01-15"
        anonymous = await r.client.get("/v2/orders")
        assert anonymous.text == "2026-06-01"  # new clients start on the latest
        unknown = await r.client.get(
            "/v2/orders", headers={**key("acme"), "surefoot-version": "2025-13-01"}
        )
        body = problem(unknown, 400, "version_unknown")
        assert body["valid"] == VERSIONS["dates"]
        listed = (await r.admin.get("/admin/versions", headers=ADMIN_HEADERS)).json()
    pinned = [e for e in events if isinstance(e, VersionPinned)]
    # The file's version is recorded too (removing it from the file moves no one); a caller
    # the file does not name is never recorded.
    assert [(e.client, e.version) for e in pinned] == [
        ("acme", "2025-03-10"),
        ("legacy", "2024-01-15"),
    ]
    assert listed["clients"]["2024-01-15"] == [{"client": "legacy", "source": "config"}]
    assert {"client": "acme", "source": "recorded", "recorded": "2025-03-10"} in listed["clients"][
        "2025-03-10"
    ]
    assert upstream.calls == 6  # the unknown version never reached it

    # A restart, another worker: the same store, the same pin.
    clock.advance(3600)
    async with running(cfg, upstream=upstream, clock=clock, hooks=[events.append]) as r:
        assert (await r.client.get("/v2/orders", headers=key("acme"))).text == "2025-03-10"
    assert len([e for e in events if isinstance(e, VersionPinned)]) == 2


async def test_a_client_cannot_choose_the_version_the_upstream_sees_by_its_forward_header() -> None:
    versions = {**VERSIONS, "header": "api-version", "forward_header": "x-api-version"}
    async with running(config(versions=versions), upstream=Echo()) as r:
        response = await r.client.get(
            "/v2/orders", headers={**key("acme"), "x-api-version": "1999-01-01"}
        )
        assert response.json() == ["2026-06-01"]
        assert response.headers["api-version"] == "2026-06-01"


class Echo:
    """Answers with every value of ``x-api-version`` it received, as JSON."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        values = [v.decode() for k, v in scope["headers"] if k == b"x-api-version"]
        body = ("[" + ",".join(f'"{v}"' for v in values) + "]").encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def test_pin_latest_records_nothing_and_follows_the_latest() -> None:
    versions = {**VERSIONS, "pin": "latest"}
    events: list[Any] = []
    async with running(config(versions=versions), upstream=Upstream(), hooks=[events.append]) as r:
        assert (await r.client.get("/v2/orders", headers=key("acme"))).text == "2026-06-01"
    assert not [e for e in events if isinstance(e, VersionPinned)]


async def test_the_admin_api_lists_deprecations_their_brownouts_and_who_still_calls() -> None:
    schedule = {"days": ["tue", "thu"], "at": "14:00", "duration": 600, "final_duration": 1800}
    deprecation = {**DEPRECATION, "brownouts": [], "brownout_schedule": schedule}
    routes = [{"match": "GET /v1/orders", "deprecation": deprecation}]
    clock = ManualClock(FEB.timestamp())
    async with running(config(routes=routes), upstream=Upstream(), clock=clock) as r:
        for name in ("acme", "acme", "legacy"):
            await r.client.get("/v1/orders", headers=key(name))
        assert r.gateway.top is not None
        await r.gateway.top.flush()
        listed = await r.admin.get("/admin/deprecations?days=7", headers=ADMIN_HEADERS)
        assert listed.status_code == 200, listed.text
        [route] = listed.json()["routes"]
        bad = await r.admin.get("/admin/deprecations?window=2d", headers=ADMIN_HEADERS)
        problem(bad, 400, "admin_bad_request")
    assert route["route"] == "GET /v1/orders"
    assert route["phase"] == "deprecated"
    assert (route["sunset"], route["extensions"]) == (
        "2027-06-01T00:00:00Z",
        {"bank": "2027-09-01T00:00:00Z"},
    )
    # 2027-02-02 is a Tuesday, 2027-02-04 a Thursday; each window longer than the last.
    starts = [w["start"] for w in route["brownouts"]]
    assert starts == ["2027-02-02T14:00:00Z", "2027-02-04T14:00:00Z"]
    lengths = [w["seconds"] for w in route["brownouts"]]
    assert 600 < lengths[0] < lengths[1] < 1800
    callers = {c["client"]: c["count"] for c in route["callers"]}
    assert callers == {"acme": 2, "legacy": 1}


async def test_the_metrics_count_deprecated_calls_per_client_and_phase() -> None:
    clock = ManualClock(FEB.timestamp())
    async with running(config(), upstream=Upstream(), clock=clock) as r:
        await r.client.get("/v1/orders", headers=key("acme"))
        await r.client.get("/v1/orders")
        exposition = (await r.admin.get("/metrics", headers=ADMIN_HEADERS)).text
    assert (
        'surefoot_deprecated_requests_total{client="acme",phase="deprecated",'
        'route="GET /v1/orders"} 1.0' in exposition
    )
    assert (
        'surefoot_deprecated_requests_total{client="other",phase="deprecated",'
        'route="GET /v1/orders"} 1.0' in exposition
    )


class Announcing:
    """An upstream that announces a deprecation and a version of its own."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [
            (b"deprecation", b"@1"),
            (b"surefoot-version", b"upstream-own"),
            (b"link", b'<https://upstream.example/next>; rel="next"'),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})


async def test_the_gateway_s_headers_replace_the_upstream_s_but_its_link() -> None:
    clock = ManualClock(FEB.timestamp())
    async with running(config(), upstream=Announcing(), clock=clock) as r:
        response = await r.client.get("/v1/orders", headers=key("acme"))
    assert response.headers.get_list("deprecation") == [f"@{int(JAN.timestamp())}"]
    assert response.headers.get_list("surefoot-version") == ["2026-06-01"]
    links = response.headers.get_list("link")
    assert links[0] == '<https://upstream.example/next>; rel="next"'
    assert 'rel="deprecation"' in links[1]


async def test_a_deprecated_route_of_any_spelling_is_listed_with_its_callers() -> None:
    route = "GET /v1/commandes/{id}/reçu" + "/x" * 120  # beyond a board name's 256 characters
    routes = [{"match": route, "deprecation": {**DEPRECATION, "brownouts": []}}]
    async with running(
        config(routes=routes), upstream=Upstream(), clock=ManualClock(FEB.timestamp())
    ) as r:
        path = "/v1/commandes/7/re%C3%A7u" + "/x" * 120
        assert (await r.client.get(path, headers=key("acme"))).status_code == 200
        assert r.gateway.top is not None
        await r.gateway.top.flush()
        listed = await r.admin.get("/admin/deprecations", headers=ADMIN_HEADERS)
        days = await r.admin.get("/admin/deprecations?days=0", headers=ADMIN_HEADERS)
    assert listed.status_code == 200, listed.text
    [entry] = listed.json()["routes"]
    assert entry["route"] == route
    assert [c["client"] for c in entry["callers"]] == ["acme"]
    assert (
        "days: expected a whole number from 1 to 366"
        in problem(days, 400, "admin_bad_request")["detail"]
    )


_BASE = '[upstream]\nurl = "http://127.0.0.1:9"\n[admin]\ntoken = "t"\n'
_CLIENT = '[[clients]]\nname = "acme"\napi_key = "k-acme-0001"\n'
_ROUTE = '[[routes]]\nmatch = "GET /v1/orders"\n[routes.deprecation]\n'


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        (
            _ROUTE + "deprecated = 2027-06-01\nsunset = 2027-01-01\n",
            "routes[0].deprecation.sunset: expected a moment after deprecated",
        ),
        (
            _ROUTE + 'deprecated = "2027-02-30"\n',
            "routes[0].deprecation.deprecated: expected",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01T00:00:00\n",
            "routes[0].deprecation.deprecated: expected a date, or a date and time with its offset",
        ),
        (
            _ROUTE + 'deprecated = 2027-01-01\nlink = "docs/migrate"\n',
            "routes[0].deprecation.link: expected an absolute http:// or https:// URL",
        ),
        (
            _CLIENT + _ROUTE + 'deprecated = 2027-01-01\nclients = ["acne"]\n',
            "routes[0].deprecation.clients: unknown client 'acne': expected a name from "
            "[[clients]] (did you mean 'acme'?)",
        ),
        (
            _CLIENT + _ROUTE + "deprecated = 2027-01-01\nsunset = 2027-06-01\n"
            "extensions = { acme = 2027-05-01 }\n",
            "routes[0].deprecation.extensions.acme: expected a moment after the sunset",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01\nsunset = 2027-06-01\n"
            "[[routes.deprecation.brownouts]]\nstart = 2027-07-01T00:00:00Z\n",
            "routes[0].deprecation.brownouts[0].start: expected a moment before the sunset",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01\n[routes.deprecation.brownout_schedule]\n"
            'days = ["tue", "tue"]\n',
            "routes[0].deprecation.brownout_schedule.days: expected each day once",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01\n[routes.deprecation.brownout_schedule]\n"
            'days = ["tue"]\nat = "25:00"\n',
            "routes[0].deprecation.brownout_schedule.at: expected a time of day 'HH:MM'",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01\n[routes.deprecation.brownout_schedule]\n"
            'days = ["tue"]\nduration = 600\nfinal_duration = 300\n',
            "routes[0].deprecation.brownout_schedule.final_duration: expected at least "
            "duration (600)",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01\n[[routes.deprecation.brownouts]]\n"
            "start = 2026-12-31T23:00:00Z\n",
            "routes[0].deprecation.brownouts[0].start: expected a moment from deprecated",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01\n[routes.deprecation.brownout_schedule]\n"
            'days = ["tue"]\nstarts = 2026-12-01\n',
            "routes[0].deprecation.brownout_schedule.starts: expected a moment from deprecated",
        ),
        (
            _CLIENT
            + '[[clients]]\nname = "bank"\napi_key = "k-bank-0001"\n'
            + _ROUTE
            + 'deprecated = 2027-01-01\nsunset = 2027-06-01\nclients = ["acme"]\n'
            "extensions = { bank = 2027-09-01 }\n",
            "routes[0].deprecation.extensions.bank: 'bank' is not in clients",
        ),
        (
            _ROUTE + "deprecated = 2027-01-01\nclients = []\n",
            "routes[0].deprecation.clients",
        ),
        (
            '[versions]\ndates = ["2025-03-10", "2024-01-15"]\n',
            "versions.dates: expected dates in increasing order, each once: '2024-01-15' at "
            "index 1 comes after '2025-03-10'",
        ),
        (
            '[versions]\ndates = ["2024-1-15"]\n',
            "versions.dates: expected dates 'YYYY-MM-DD', got '2024-1-15' at index 0",
        ),
        (
            '[versions]\ndates = ["2024-02-30"]\n',
            "versions.dates: expected dates 'YYYY-MM-DD', got '2024-02-30' at index 0",
        ),
        ("[versions]\ndates = []\n", "versions.dates"),
        (
            '[versions]\ndates = ["2024-01-15"]\ninitial = "2023-01-01"\n',
            "versions.initial: expected one of dates",
        ),
        (
            '[versions]\ndates = ["2024-01-15"]\n' + _CLIENT + 'version = "2025-01-01"\n',
            "clients[0].version: expected one of [versions] dates (2024-01-15), got '2025-01-01'",
        ),
        (
            _CLIENT + 'version = "2025-01-01"\n',
            "clients[0].version: a client's version needs [versions]",
        ),
        (
            '[versions]\ndates = ["2024-01-15"]\nstore = "elsewhere"\n',
            "versions.store: expected a name from [stores]",
        ),
    ],
)
def test_a_bad_contract_table_is_refused_naming_its_line_and_field(
    tmp_path: Path, toml: str, error: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(_BASE + toml)
    with pytest.raises(ConfigurationError) as raised:
        load_config(str(path))
    assert f"{path}:" in str(raised.value)
    assert error in str(raised.value)
