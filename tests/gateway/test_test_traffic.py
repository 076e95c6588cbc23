"""Test traffic: requests carrying ``[server] test_traffic_header`` from an address of
``test_traffic_from`` are served like any other (limits included) but left out of the
metrics; the same header from elsewhere counts."""

from __future__ import annotations

import pytest
from _gateway_helpers import EchoUpstream, gateway_config, running
from prometheus_client.parser import text_string_to_metric_families

from surefoot.errors import ConfigurationError
from surefoot.gateway import GatewayMetrics
from surefoot.metrics import counted, uncounted

pytestmark = pytest.mark.anyio

SERVER = {"test_traffic_header": "x-test-run", "test_traffic_from": ["10.9.0.0/16"]}
POLICY = {"policies": [{"name": "reads", "limits": ["100/minute"]}]}


def samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def total(metrics: GatewayMetrics, name: str) -> float:
    return sum(v for (n, _), v in samples(metrics).items() if n == name)


async def test_test_requests_are_served_and_limited_but_not_counted() -> None:
    config = gateway_config(server=SERVER, rate_limit=POLICY)
    metrics = GatewayMetrics()
    async with (
        running(config, upstream=EchoUpstream(), metrics=metrics) as gw,
        gw.connect(client="10.9.3.4") as tester,
        gw.connect(client="10.8.0.1") as other,
    ):
        marked = await tester.get("/a", headers={"x-test-run": "ci-42"})
        assert marked.status_code == 200
        assert "ratelimit" in marked.headers  # limits still apply
        assert total(metrics, "surefoot_http_requests_total") == 0
        assert total(metrics, "surefoot_ratelimit_decisions_total") == 0
        assert total(metrics, "surefoot_upstream_requests_total") == 0
        # The header from an address outside test_traffic_from counts, as does a
        # request from a test address without it.
        assert (await other.get("/a", headers={"x-test-run": "x"})).status_code == 200
        assert (await tester.get("/a")).status_code == 200
        assert total(metrics, "surefoot_http_requests_total") == 2
        # Two policies decide each request: "reads" and the gateway's "address".
        assert total(metrics, "surefoot_ratelimit_decisions_total") == 2 * 2
        assert total(metrics, "surefoot_upstream_requests_total") == 2
        assert total(metrics, "surefoot_inflight_requests") == 0


async def test_without_the_setting_the_header_means_nothing() -> None:
    metrics = GatewayMetrics()
    async with (
        running(gateway_config(), upstream=EchoUpstream(), metrics=metrics) as gw,
        gw.connect(client="10.9.3.4") as client,
    ):
        assert (await client.get("/a", headers={"x-test-run": "1"})).status_code == 200
    assert total(metrics, "surefoot_http_requests_total") == 1


def test_uncounted_is_scoped_and_nests() -> None:
    assert counted()
    with uncounted():
        assert not counted()
        with uncounted():
            assert not counted()
        assert not counted()
    assert counted()


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"test_traffic_header": "x-test-run"}, "expected test_traffic_from too"),
        ({"test_traffic_header": "X Test", "test_traffic_from": ["10.0.0.0/8"]}, "header name"),
        ({"test_traffic_header": "x-t", "test_traffic_from": ["nowhere"]}, "IP addresses"),
    ],
)
def test_bad_settings_are_refused(server: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        gateway_config(server=server)
