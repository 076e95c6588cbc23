"""``surefoot docs``: the consumer page of a policy file, in Markdown and HTML.

Checked on every gateway config of ``examples/`` and on one that uses every feature the
page describes (a deprecated route with brownouts, versions, tiers, client overrides, a
rolled-out and a shadow policy, an idempotent POST), with values that would be markup if
they were not escaped and secrets that must never appear.
"""

from __future__ import annotations

import base64
import html
import os
import re
import subprocess
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from surefoot.cli import main
from surefoot.errors import catalogue
from surefoot.gateway import GatewayConfig, consumer_docs, load_config
from surefoot.gateway._consumer_docs import (
    RECOVERY,
    Guide,
    Window,
    consumer_guide,
    guide_html,
    guide_markdown,
)
from surefoot.ratelimit import RateLimitPolicy
from surefoot.ratelimit._plan import LimitSet

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "consumer.md"
CHROMIUM = "/usr/bin/chromium"
SCRIPT = "<script>alert(1)</script>"
API_KEY = "sk_live_secret_acme_0001"
ADMIN_TOKEN = "admin-token-secret-0002"
ENV_KEY = "sk_live_from_env_0003"

POLICY = f"""
[upstream]
url = "http://upstream.internal:9000"

[stores]
default = "memory://"

[admin]
token = "{ADMIN_TOKEN}"

[[clients]]
name = "acme"
api_key = "{API_KEY}"
tier = "gold"
version = "2024-01-01"

[[clients]]
name = "beta"
api_key_env = "CONSUMER_DOCS_BETA_KEY"
critical = true

[idempotency]
methods = ["POST"]
ttl = 172800

[rate_limit]
legacy_headers = true

[[rate_limit.policies]]
name = "orders"
limits = ["10/second", "500/hour"]
routes = ["POST /orders", "GET /v1/orders/{{id}}"]
costs = {{ "POST /orders" = 5 }}
tiers = {{ gold = ["100/second", "5000/hour"], "{SCRIPT}" = ["1/second"] }}
overrides = {{ beta = ["20/second"] }}
rollout = {{ percent = 25, clients = ["acme"] }}

[[rate_limit.policies]]
name = "search"
limits = ["30/minute"]
routes = ["GET /search"]
shadow = true

[[rate_limit.policies]]
name = "exports"
algorithm = "quota"
limits = ["1000/day"]
routes = ["POST /exports"]

[[routes]]
match = "POST /orders"
[routes.idempotency]
required = true
wait = 5
on_server_error = "unknown"

[[routes]]
match = "GET /v1/orders/{{id}}"
[routes.deprecation]
deprecated = 2026-01-01
sunset = 2026-07-01
link = "https://example.com/migrate?a=1&b=2"
replacement = "GET /v2/orders/{{id}} {SCRIPT}"
clients = ["acme", "beta"]
extensions = {{ beta = 2026-09-01 }}
[[routes.deprecation.brownouts]]
start = 2026-05-05T14:00:00Z
duration = 3600
[routes.deprecation.brownout_schedule]
days = ["thu", "tue"]
at = "15:30"
duration = 600
final_duration = 3600

[[routes]]
match = "GET /items/{SCRIPT}"
idempotency = false

[versions]
dates = ["2024-01-01", "2025-06-01"]
header = "API-Version"
pin = "first_used"
"""


@pytest.fixture
def policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CONSUMER_DOCS_BETA_KEY", ENV_KEY)
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def _examples() -> list[Path]:
    """The gateway configs of ``examples/`` (drills are another tool's files)."""
    return sorted(p for p in (ROOT / "examples").rglob("*.toml") if "[upstream]" in p.read_text())


def _env_names(node: object) -> list[str]:
    """The environment variables a parsed policy file names (``*_env`` fields)."""
    if isinstance(node, dict):
        found = []
        for name, value in node.items():
            if name.endswith("_env") and isinstance(value, str):
                found.append(value)
            elif name.endswith("_env") and isinstance(value, list):
                found += [v for v in value if isinstance(v, str)]
            else:
                found += _env_names(value)
        return found
    if isinstance(node, list):
        return [name for item in node for name in _env_names(item)]
    return []


@pytest.fixture(params=_examples(), ids=lambda p: str(p.relative_to(ROOT)))
def example(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[GatewayConfig, list[str]]:
    """An example config, loaded with a secret for each variable it names, and its secrets."""
    path: Path = request.param
    secrets = []
    for name in _env_names(tomllib.loads(path.read_text())):
        secret = f"whsec_{base64.b64encode(name.encode().ljust(24, b'.')).decode()}"
        monkeypatch.setenv(name, secret)
        secrets.append(secret)
    config = load_config(path)
    return config, [*secrets, *config.api_keys, *filter(None, [config.admin_token])]


# -- what the page says ----------------------------------------------------------------------


def _sections(markdown: str) -> dict[str, str]:
    """Each route's section of the Markdown, by its heading's text."""
    parts = re.split(r"^### (.+)$", markdown, flags=re.M)
    return {parts[i].strip("`"): parts[i + 1] for i in range(1, len(parts), 2)}


def _codes(section: str) -> list[tuple[int, str, str]]:
    """(status, code, retry) of each row of a section's error table."""
    return [
        (int(status), code, retry)
        for status, code, retry in re.findall(
            r"^\| (\d{3}) \| \[`([a-z_]+)`\]\([^)]*\) \|.*\| ([a-z ]+) \|$", section, flags=re.M
        )
    ]


def test_every_route_appears_with_its_errors(policy: Path) -> None:
    config = load_config(policy)
    sections = _sections(consumer_docs(config))
    assert set(sections) == {
        "GET /items/<script>alert(1)</script>",
        "GET /search",
        "GET /v1/orders/{id}",
        "POST /exports",
        "POST /orders",
    }
    codes = {route: {c for _, c, _ in _codes(text)} for route, text in sections.items()}
    always = {"invalid_path", "credentials_ambiguous", "request_body_too_large"}
    always |= {"request_headers_too_large", "upstream_unavailable", "upstream_timeout"}
    assert all(always <= found for found in codes.values())
    assert all("version_unknown" in found for found in codes.values())
    orders = codes["POST /orders"]
    assert {
        "idempotency_key_missing",
        "idempotency_key_invalid",
        "idempotency_request_in_progress",
        "idempotency_outcome_unknown",
        "idempotency_key_reused",
        "rate_limit_exceeded",
    } <= orders
    assert "route_retired" not in orders
    assert "route_retired" in codes["GET /v1/orders/{id}"]
    assert "quota_exceeded" in codes["POST /exports"]
    # A shadow policy refuses nothing; a route without a key has no key problems.
    assert not {"rate_limit_exceeded", "quota_exceeded"} & codes["GET /search"]
    assert not any(c.startswith("idempotency_") for c in codes["GET /search"])


def test_the_page_describes_keys_limits_and_deprecations(policy: Path) -> None:
    now = datetime(2026, 5, 5, 14, 30, tzinfo=UTC).timestamp()
    text = consumer_docs(load_config(policy), now=now)
    sections = _sections(text)
    orders = sections["POST /orders"]
    assert "Required on POST" in orders
    assert "`Idempotency-Key`" in orders
    assert "`Idempotent-Replayed: true`" in orders
    assert "1 to 255 printable ASCII characters" in orders
    assert "remembered for 2 days" in orders
    assert "waits up to 5 seconds" in orders
    assert "A request here counts as 5 requests." in orders
    assert "being rolled out: enforced for 25% of clients and for some chosen clients" in orders
    assert "Some clients have other limits by agreement." in orders
    assert "| tier gold | 100 per second; 5000 per hour |" in orders
    assert "not enforced yet" in sections["GET /search"]
    assert (
        "| everyone | 1000 per calendar day (UTC) | the current period's |"
        in (sections["POST /exports"])
    )
    old = sections["GET /v1/orders/{id}"]
    assert "State: in a brownout window now" in old
    assert "Sunset on 2026-07-01" in old
    assert "Some clients have a later sunset by agreement." in old
    assert "2026-05-05 14:00 UTC for 1 hour" in old
    assert "every Tue, Thu at 15:30 UTC from 2026-01-01 until the sunset" in old
    assert "growing to 1 hour" in old
    assert "Applies to some clients only." in old
    assert "As of 2026-05-05 14:30 UTC." in text
    assert "`X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset`" in text
    assert "Versions: 2024-01-01, 2025-06-01 (latest: 2025-06-01)." in text
    assert "header: `api-version`" in text
    assert "pinned to" not in text


@pytest.mark.parametrize(
    ("moment", "state"),
    [
        (datetime(2025, 12, 1, tzinfo=UTC), "State: announced: deprecated from 2026-01-01."),
        (datetime(2026, 2, 1, tzinfo=UTC), "State: deprecated."),
        (datetime(2026, 7, 1, tzinfo=UTC), "State: retired since 2026-07-01"),
    ],
)
def test_the_deprecation_state_depends_on_now(policy: Path, moment: datetime, state: str) -> None:
    config = load_config(policy)
    assert state in consumer_docs(config, now=moment.timestamp())
    assert "State:" not in consumer_docs(config)


def test_the_rate_limit_policy_field_is_the_one_the_limiter_sends(policy: Path) -> None:
    guides = [
        consumer_guide(load_config(policy)),
        consumer_guide(load_config(policy), client="beta"),
    ]
    rows = [
        (limits.name, row)
        for guide in guides
        for route in guide.routes
        for limits in route.limits
        for row in limits.rows
        if row.policy_field is not None
    ]
    assert any(row.who == "you, by agreement" for _, row in rows)
    config = load_config(policy)
    built = {p.name: p for p in config.rate_limit_policies}
    for name, row in rows:
        policy_value = built[name]
        limits = {
            "everyone": policy_value.limits,
            "tier gold": policy_value.tiers.get("gold"),
            f"tier {SCRIPT}": policy_value.tiers.get(SCRIPT),
        }.get(row.who) or next(iter(policy_value.overrides.values()))
        expected = LimitSet(policy_value, limits).policy_field
        assert expected is not None
        assert row.policy_field == expected.decode()


def test_the_page_lists_the_upcoming_windows_it_is_given(policy: Path) -> None:
    guide = consumer_guide(load_config(policy))
    route = next(r for r in guide.routes if r.retirement is not None)
    assert route.retirement is not None
    start = datetime(2026, 6, 2, 15, 30, tzinfo=UTC).timestamp()
    retirement = type(route.retirement)(
        **{
            **{f: getattr(route.retirement, f) for f in route.retirement.__slots__},
            "upcoming": (Window(start, start + 1800),),
        }
    )
    routes = tuple(
        type(r)(r.method, r.path, r.key, r.limits, retirement, r.problems) if r is route else r
        for r in guide.routes
    )
    guide = Guide(**{**{f: getattr(guide, f) for f in guide.__slots__}, "routes": routes})
    assert "- Next: 2026-06-02 15:30 UTC for 30 minutes" in guide_markdown(guide)
    assert "<li>Next: 2026-06-02 15:30 UTC for 30 minutes</li>" in guide_html(guide)


BASE = """
[upstream]
url = "http://upstream.internal:9000"

[stores]
default = "memory://"

[admin]
enabled = false
"""


@pytest.mark.parametrize(
    ("fragment", "route", "codes", "phrases"),
    [
        pytest.param(
            """
[[rate_limit.policies]]
name = "inflight"
algorithm = "concurrency"
limits = ["3/second"]
routes = ["/jobs"]
""",
            "ANY /jobs",
            {"concurrency_limit_exceeded"},
            [
                "3 requests in flight at once",
                '`"inflight";q=3;qu="concurrent-requests"`',
                "per client address, over every credential sent from it",
                "Required on POST, PATCH",
            ],
            id="concurrency-and-address-ceiling",
        ),
        pytest.param(
            """
[[rate_limit.policies]]
name = "bursty"
algorithm = "token_bucket"
limits = ["10/minute"]
routes = ["GET /feed"]
per_route = true
[[rate_limit.policies]]
name = "queue"
algorithm = "leaky_queue"
limits = ["2/second", "100/30 seconds"]
routes = ["GET /feed"]
""",
            "GET /feed",
            {"rate_limit_exceeded"},
            [
                "10 per minute",
                "per client, for each route separately",
                "2 per second (a request over it waits up to 1 second first)",
                "100 per 30 seconds",
                '`"queue-1s";q=2;w=1, "queue-30s";q=100;w=30`',
            ],
            id="algorithms",
        ),
        pytest.param(
            """
[idempotency]
required = false
body_field = "idempotency_key"
on_server_error = "store"
on_store_error = "fail_open"
max_records_per_principal = false
max_unknown_per_principal = false
[[routes]]
match = "POST /pay"
""",
            "POST /pay",
            {"idempotency_key_ambiguous", "idempotency_key_invalid"},
            [
                "Optional on POST",
                "Or in the top-level JSON body field: `idempotency_key`.",
                "the failure is kept: a retry gets it again",
                "`Idempotency-Status: unprotected`",
            ],
            id="optional-key",
        ),
        pytest.param(
            """
[idempotency]
rollout = true
on_server_error = "release"
scope = "principal_route"
[[routes]]
match = "POST /pay"
""",
            "POST /pay",
            {"idempotency_key_missing", "store_unavailable"},
            [
                "Being made required on POST",
                "the key is released: a retry runs again",
                "per client and route",
            ],
            id="rollout-key",
        ),
        pytest.param(
            """
[abuse.challenge]
url = "https://example.com/verify"
[abuse.anomaly]
action = "tighten"
[[abuse.failures]]
name = "login"
routes = ["POST /login"]
by = "address"
threshold = 10
window = 600
challenge_after = 5
[[routes]]
match = "POST /login"
idempotency = false
""",
            "POST /login",
            {"access_denied", "challenge_required", "abuse_limit_exceeded"},
            ["This route takes no idempotency key."],
            id="abuse",
        ),
        pytest.param(
            """
[[routes]]
match = "DELETE /old"
[routes.deprecation]
deprecated = 2026-01-01T12:30:00Z
sunset_link = "https://example.com/sunset"
[routes.deprecation.brownout_schedule]
days = ["mon"]
""",
            "DELETE /old",
            {"route_retired"},
            [
                "Deprecated from 2026-01-01 12:30 UTC",
                "No sunset date is decided yet.",
                "About the sunset (each response links to it in a Link header with "
                '`rel="sunset"`): <https://example.com/sunset>',
                "every Mon at 14:00 UTC from 2026-01-01 12:30 UTC, each window lasting 10 minutes.",
            ],
            id="deprecation-without-sunset",
        ),
    ],
)
def test_each_feature_is_described_with_its_problems(
    tmp_path: Path, fragment: str, route: str, codes: set[str], phrases: list[str]
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BASE + fragment)
    config = load_config(path)
    section = _sections(consumer_docs(config))[route]
    assert codes <= {code for _, code, _ in _codes(section)}
    for phrase in phrases:
        assert phrase in section
    _check_catalogue(config)
    _check_outputs(config, [])


# -- the catalogue -----------------------------------------------------------------------------


def _check_catalogue(config: GatewayConfig) -> None:
    by_code = {cls.code: cls for cls in catalogue()}
    guide = consumer_guide(config)
    assert guide.routes
    for route in guide.routes:
        assert route.problems
        for problem in route.problems:
            cls = by_code[problem.code]
            assert (problem.status, problem.title) == (cls.status, cls.title)
            assert (problem.retry == "no") == (not cls.retryable), problem
            assert problem.recovery
            assert "{" not in problem.recovery
    for text in (consumer_docs(config), consumer_docs(config, format="html")):
        for code in re.findall(r"surefoot\.dev/problems/([a-z-]+)", text):
            assert code.replace("-", "_") in by_code


def test_every_error_listed_is_in_the_catalogue(policy: Path) -> None:
    assert set(RECOVERY) <= {cls.code for cls in catalogue()}
    _check_catalogue(load_config(policy))


def test_examples_errors_are_in_the_catalogue(example: tuple[GatewayConfig, list[str]]) -> None:
    _check_catalogue(example[0])


# -- parsing, escaping, secrets ----------------------------------------------------------------


class _Balanced(HTMLParser):
    """Checks that every element is closed in order (void elements excepted)."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1:] == [tag], (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse_html(page: str) -> _Balanced:
    parser = _Balanced()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    return parser


def _check_outputs(config: GatewayConfig, secrets: list[str]) -> None:
    markdown = consumer_docs(config)
    page = consumer_docs(config, format="html")
    # Markdown: parses, and its HTML rendering has no element the file's values made.
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    parser = _parse_html(f"<div>{rendered}</div>")
    assert "script" not in parser.tags
    assert rendered.count("<h3>") == len(consumer_guide(config).routes)
    # HTML: balanced, self-contained (links, but nothing loaded from elsewhere), no script.
    parser = _parse_html(page)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(parser.tags)
    assert not [name for name, _ in parser.attrs if name == "src" or name.startswith("on")]
    hrefs = [value or "" for name, value in parser.attrs if name == "href"]
    assert all(h.startswith(("#", "https://", "http://")) for h in hrefs)
    for secret in secrets:
        assert secret not in markdown
        assert secret not in page
    # Deterministic.
    assert consumer_docs(config) == markdown
    assert consumer_docs(config, format="html") == page


def test_outputs_parse_escape_and_keep_secrets(policy: Path) -> None:
    config = load_config(policy)
    _check_outputs(config, [API_KEY, ADMIN_TOKEN, ENV_KEY])
    page = consumer_docs(config, format="html", title=SCRIPT)
    assert SCRIPT not in page
    assert html.escape(SCRIPT) in page
    assert "https://example.com/migrate?a=1&amp;b=2" in page
    markdown = consumer_docs(config, title=SCRIPT)
    assert SCRIPT not in MarkdownIt("commonmark").enable("table").render(markdown)
    # The title and the route (twice each), the tier (on both routes of its policy) and the
    # replacement, as text.
    assert "".join(_parse_html(page).text).count(SCRIPT) == 7


def test_examples_outputs_parse_escape_and_keep_secrets(
    example: tuple[GatewayConfig, list[str]],
) -> None:
    config, secrets = example
    assert secrets  # every example names a client or an admin token: else this checks nothing
    _check_outputs(config, secrets)


def test_an_unknown_format_is_refused(policy: Path) -> None:
    with pytest.raises(ValueError, match="expected 'markdown' or 'html'"):
        consumer_docs(load_config(policy), format="pdf")  # type: ignore[arg-type]


def test_a_policy_without_routes_covers_every_route() -> None:
    policy = RateLimitPolicy("all", limits=["1/second"])
    assert policy.route_for("GET", "/anything") == ""  # what consumer_guide relies on


# -- whose page (no client's terms on another's page) ------------------------------------------

#: A third client, which the deprecation of the rich config does not list.
GAMMA = '\n[[clients]]\nname = "gamma"\naddress = "10.0.0.9"\n'
#: What names a client or tells its special terms: names, beta's later sunset (as a date
#: and as the Sunset field's date), acme's pinned version.
_NAMES = ("acme", "beta", "gamma")
_BETA_SUNSET = ("2026-09-01", "01 Sep 2026")
_NOWS = [None, datetime(2026, 5, 5, 14, 30, tzinfo=UTC).timestamp()]


@pytest.fixture
def config(policy: Path) -> GatewayConfig:
    policy.write_text(POLICY + GAMMA)
    return load_config(policy)


def _found(text: str, words: tuple[str, ...]) -> list[str]:
    return [w for w in words if w.lower() in text.lower()]


@pytest.mark.parametrize("fmt", ["markdown", "html"])
@pytest.mark.parametrize("now", _NOWS)
def test_the_default_page_names_no_client(config: GatewayConfig, fmt: str, now: float) -> None:
    page = consumer_docs(config, format=fmt, now=now)  # type: ignore[arg-type]
    assert _found(page, _NAMES + _BETA_SUNSET + ("2024-01-01 (",)) == []
    assert "pinned to 2024-01-01" not in page
    # Honest, without names: the special terms exist.
    assert "Some clients have other limits by agreement." in page
    assert "Some clients have a later sunset by agreement." in page
    assert "Applies to some clients only." in page
    assert "enforced for 25% of clients and for some chosen clients" in page


@pytest.mark.parametrize("fmt", ["markdown", "html"])
@pytest.mark.parametrize("now", _NOWS)
@pytest.mark.parametrize("client", ["acme", "beta", "gamma"])
def test_a_client_page_names_no_other_client(
    config: GatewayConfig, fmt: str, now: float, client: str
) -> None:
    page = consumer_docs(config, format=fmt, now=now, client=client)  # type: ignore[arg-type]
    others = tuple(n for n in _NAMES if n != client)
    assert _found(page, others) == []
    assert f"This page is for the client {client}:" in page
    if client != "beta":
        assert _found(page, _BETA_SUNSET) == []
        assert "20 per second" not in page  # beta's override
    if client != "acme":
        assert "pinned to" not in page
    assert "Some clients have" not in page


def test_a_client_page_shows_its_own_terms(config: GatewayConfig) -> None:
    now = datetime(2026, 5, 5, 14, 30, tzinfo=UTC).timestamp()
    beta = _sections(consumer_docs(config, now=now, client="beta"))
    assert '| you, by agreement | 20 per second | `"orders";q=20;w=1` |' in beta["POST /orders"]
    old = beta["GET /v1/orders/{id}"]
    assert "Sunset on 2026-09-01" in old
    assert "`Sunset: Tue, 01 Sep 2026 00:00:00 GMT`" in old
    assert "Your sunset is extended from 2026-07-01." in old
    # beta is critical: inside a brownout window it is still served, and no window is listed.
    assert "State: deprecated." in old
    assert "brownouts spare it" in old
    assert "Next:" not in old
    assert "Scheduled:" not in old
    # After the route's sunset, beta is not retired until its own.
    july = datetime(2026, 7, 15, tzinfo=UTC).timestamp()
    assert "State: deprecated." in consumer_docs(config, now=july, client="beta")
    assert "State: retired since 2026-07-01" in consumer_docs(config, now=july)
    acme = consumer_docs(config, now=now, client="acme")
    sections = _sections(acme)
    assert "| tier gold (yours) | 100 per second; 5000 per hour |" in sections["POST /orders"]
    assert "| everyone | 10 per second; 500 per hour |" in sections["POST /orders"]
    assert "being rolled out to a share of clients, and enforced for you already" in acme
    assert "Your account is pinned to 2024-01-01." in acme
    assert "State: in a brownout window now" in sections["GET /v1/orders/{id}"]
    assert "Next: 2026-05-05 14:00 UTC for 1 hour" in sections["GET /v1/orders/{id}"]
    assert "Sunset on 2026-07-01" in sections["GET /v1/orders/{id}"]


def test_a_deprecation_for_other_clients_is_not_on_a_client_page(config: GatewayConfig) -> None:
    page = consumer_docs(config, client="gamma")
    old = _sections(page)["GET /v1/orders/{id}"]
    assert "#### Deprecation" not in old
    assert "route_retired" not in old
    assert "| [`GET /v1/orders/{id}`](#get-v1ordersid) | none | orders | no |" in page
    assert "| everyone (yours) |" in old
    # Whether the rollout enforces orders for gamma is the limiter's own answer.
    orders = next(p for p in config.rate_limit_policies if p.name == "orders")
    enforced = orders.enforced_for("addr:10.0.0.9")
    assert ("enforced for you already" in page) is enforced
    assert ("not to you yet" in page) is not enforced


@pytest.mark.parametrize("listed", [frozenset(), frozenset({"beta"})])
def test_a_deprecation_listing_no_client_or_only_extended_ones_does_not_crash(
    config: GatewayConfig, listed: frozenset[str]
) -> None:
    # The schema refuses `clients = []`; a Lifecycle built otherwise may still have it.
    template = "GET /v1/orders/{id}"
    config.lifecycles[template] = replace(config.lifecycles[template], clients=listed)
    for now in [*_NOWS[1:], datetime(2026, 8, 1, tzinfo=UTC).timestamp()]:
        page = consumer_docs(config, now=now)
        old = _sections(page)["GET /v1/orders/{id}"]
        # The route's own dates (a client without an extension), never beta's.
        assert "Sunset on 2026-07-01" in old
        assert _found(page, _NAMES + _BETA_SUNSET) == []
        assert ("Applies to no client yet." in old) is (not listed)
    assert "State: retired since 2026-07-01" in old
    beta = consumer_docs(config, now=now, client="beta")
    assert ("State: deprecated." in beta) is bool(listed)


# -- the command -------------------------------------------------------------------------------


def test_cli_writes_the_page(policy: Path, tmp_path: Path) -> None:
    out = tmp_path / "api.html"
    result = CliRunner().invoke(
        main,
        ["docs", "--config", str(policy), "--format", "html", "-o", str(out), "--title", "Orders"],
    )
    assert result.exit_code == 0, result.output
    assert out.read_text() == consumer_docs(load_config(policy), format="html", title="Orders")
    result = CliRunner().invoke(
        main, ["docs", "--config", str(policy), "--now", "2026-02-01T00:00:00Z"]
    )
    assert result.exit_code == 0, result.output
    assert "State: deprecated." in result.output
    assert "As of 2026-02-01 00:00 UTC." in result.output


def test_cli_reports_a_bad_config_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[upstream]\nurl = "http://x"\n\n[admin]\nenabled = false\n\n[server]\nport = "x"\n'
    )
    result = CliRunner().invoke(main, ["docs", "--config", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:8: server.port:" in result.output


def test_cli_writes_one_client_page(policy: Path) -> None:
    result = CliRunner().invoke(
        main, ["docs", "--config", str(policy), "--client", "beta", "--now", "2026-02-01T00:00:00Z"]
    )
    assert result.exit_code == 0, result.output
    expected = consumer_docs(
        load_config(policy), now=datetime(2026, 2, 1, tzinfo=UTC).timestamp(), client="beta"
    )
    assert result.output == expected
    assert "Your sunset is extended from 2026-07-01." in result.output


def test_cli_refuses_an_unknown_client(policy: Path) -> None:
    result = CliRunner().invoke(main, ["docs", "--config", str(policy), "--client", "zeta"])
    assert result.exit_code == 2
    assert "--client: no [[clients]] named 'zeta'" in result.output
    with pytest.raises(ValueError, match="no \\[\\[clients\\]\\] named 'zeta'"):
        consumer_docs(load_config(policy), client="zeta")


def test_cli_refuses_a_now_without_offset(policy: Path) -> None:
    result = CliRunner().invoke(main, ["docs", "--config", str(policy), "--now", "2026-02-01"])
    assert result.exit_code == 2
    assert "--now" in result.output


# -- the example page --------------------------------------------------------------------------


def test_docs_example_is_generated_from_the_example_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["docs", "--config", "examples/gateway.toml"])
    assert result.exit_code == 0, result.output
    assert EXAMPLE.read_text() == result.output, (
        "docs/examples/consumer.md is out of date: run "
        "`surefoot docs --config examples/gateway.toml -o docs/examples/consumer.md`"
    )


# -- in a browser ------------------------------------------------------------------------------


def _chromium() -> str:
    """The system's Chromium: skipped when it is missing, a failure instead when
    ``SUREFOOT_REQUIRE_SERVICES=1`` (as in CI)."""
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is not installed (Debian package chromium)"
        if os.environ.get("SUREFOOT_REQUIRE_SERVICES") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return CHROMIUM


def test_the_page_renders_in_chromium(policy: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "api.html"
    page.write_text(consumer_docs(load_config(policy), format="html"))
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    dom = done.stdout
    table = re.search(r'<table id="routes">.*?</table>', dom, flags=re.S)
    assert table is not None, dom[:2000]
    rows = re.findall(r"<tr><td><a href=\"#([^\"]+)\">", table.group(0))
    assert len(rows) == 5
    # Each row links to its route's section, and the <script> route stayed text.
    assert all(f'id="{anchor}"' in dom for anchor in rows)
    assert "<script>" not in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
