"""What the gateway shows and accepts at its edges for operators: secrets masked in every
message and in ``/admin/config``, the running values in ``/admin/config``, admin input
validated before anything is stored, and ``check-config`` finding what would fail at start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from _gateway_helpers import (
    ADMIN_HEADERS,
    EchoUpstream,
    free_port,
    gateway_config,
    problem,
    running,
    surefoot_serve,
    toml_config,
)
from click.testing import CliRunner, Result

from surefoot._masking import masked_text, masked_url
from surefoot.cli import main
from surefoot.errors import ConfigurationError
from surefoot.gateway import AdminApp, load_config
from surefoot.idempotency._core import Begin, Outcome, Step
from surefoot.storage import store_from_url

pytestmark = pytest.mark.anyio

# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://u:S1@db:6379/0?prefix=gw:&ssl_password=S2",
         "redis://u:***@db:6379/0?prefix=gw:&ssl_password=***"),
        ("postgresql://app:S1@db/x?sslpassword=S2&passfile=S3&schema=s&password=S4",
         "postgresql://app:***@db/x?sslpassword=***&passfile=***&schema=s&password=***"),
        ("rediss://:S1@h?Password=S2&API-KEY=S3&access_token=S4&sslkey=S5&x&timeout=0.1",
         "rediss://:***@h?Password=***&API-KEY=***&access_token=***&sslkey=***&x&timeout=0.1"),
        ("redis://h/0?ssl%5Fpassword=S1&client_secret=S2&auth=S3",
         "redis://h/0?ssl%5Fpassword=***&client_secret=***&auth=***"),
        ("https://user:p@ss:S1@api.test/v1#frag", "https://user:***@api.test/v1#frag"),
        ("sqlite:///gw.db?synchronous=FULL", "sqlite:///gw.db?synchronous=FULL"),
        ("memory://", "memory://"),
        ("http://[::1", "http://[::1"),
        # A password with an unencoded '?', '#' or '/': the authority cannot be read, so
        # everything up to the last '@' is hidden (these used to be shown whole or in part).
        ("redis://u:pa?S1@host", "redis://***@host"),
        ("redis://u:pa#S1@host/0?password=S2", "redis://***@host/0?password=***"),
        ("redis://u:pa/S1@host:6379/0", "redis://***@host:6379/0"),
        ("postgresql://:9/S1@db/app", "postgresql://***@db/app"),
        ("sqlite:///backups/x@S1.db", "sqlite:///backups/x@S1.db"),  # no password in it
        # libpq's key=value form (PostgresStore takes it too).
        ("host=db password='S1 S1' user=app sslpassword = S1", "host=db password=*** user=app "
         "sslpassword = ***"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_its_password_and_secret_options(url: str, masked: str) -> None:
    assert masked_url(url) == masked
    assert "S1" not in masked_url(url) or "S1.db" in url


def test_a_drivers_message_about_a_url_is_masked_too() -> None:
    url = "postgresql://u:p%zzS1@db/app?sslpassword=S%202"
    message = f'invalid percent-encoded token: "p%zzS1"; sslpassword S 2 in URI: "{url}"'
    assert masked_text(message, url) == (
        'invalid percent-encoded token: "***"; sslpassword *** in URI: '
        '"postgresql://u:***@db/app?sslpassword=***"'
    )


def test_the_admin_config_masks_store_and_upstream_urls() -> None:
    config = gateway_config(
        upstream={"url": "http://svc:UP-SECRET@upstream.test"},
        stores={
            "default": "memory://",
            "redis": "redis://:PW-1@127.0.0.1:6379/0?password=PW-2&ssl_password=PW-3",
            "pg": "postgresql://app:PW-4@db/app?sslpassword=PW-5&passfile=PW-6&schema=gw",
        },
        routes=[
            {
                "match": "POST /charges",
                "idempotency": {
                    "lookup": {"path": "/c/{key}", "headers": {"Authorization": "Bearer PW-7"}}
                },
            }
        ],
    )

    effective = config.effective()

    text = json.dumps(effective)
    assert "SECRET" not in text
    assert "PW-" not in text
    assert effective["upstream"]["url"] == "http://svc:***@upstream.test"
    assert effective["stores"]["redis"] == (
        "redis://:***@127.0.0.1:6379/0?password=***&ssl_password=***"
    )
    assert effective["stores"]["pg"] == (
        "postgresql://app:***@db/app?sslpassword=***&passfile=***&schema=gw"
    )
    assert config.upstream_label == "http://svc:***@upstream.test"


SECRETS_FILE = """\
[upstream]
url = "ftp://user:URL-SECRET@upstream.test"

[[clients]]
name = "a"
api_key = 12345

[[clients]]
name = "b"
api_key = ["LIST-SECRET"]

[[routes]]
match = "POST /charges"
[routes.idempotency.lookup]
path = "/charges/{key}"
headers = { Authorization = 67890 }

[stores]
default = ["redis://:STORE-SECRET@127.0.0.1"]

[admin]
token = 424242
"""


def test_check_config_never_echoes_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(SECRETS_FILE)

    result = CliRunner().invoke(main, ["check-config", str(path)])

    assert result.exit_code == 1
    for secret in ("URL-SECRET", "12345", "LIST-SECRET", "67890", "STORE-SECRET", "424242"):
        assert secret not in result.output
    assert "got 'ftp://user:***@upstream.test'" in result.output
    assert f"{path}:6: clients[0].api_key: expected " in result.output
    assert "got an integer (hidden)" in result.output
    assert "got an array (hidden)" in result.output


def test_a_store_url_error_never_echoes_its_secrets() -> None:
    with pytest.raises(ConfigurationError) as raised:
        store_from_url("memory://?max_records=5&password=PW-1&sslpassword=PW-2")

    assert "PW-" not in str(raised.value)
    assert "password=***&sslpassword=***" in str(raised.value)


# -- tiers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ({"partner": ["50/second"]},
         "no rate-limit policy defines the tier 'partnr' (did you mean 'partner'?)"),
        ({"gold": ["50/second"]},
         "no rate-limit policy defines the tier 'partnr'; they define 'gold'"),
        ({}, "no rate-limit policy defines the tier 'partnr'; none defines tiers"),
    ],
)  # fmt: skip
def test_a_tier_no_policy_defines_is_refused(tiers: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        gateway_config(
            clients=[{"name": "acme", "api_key": "sk_acme", "tier": "partnr"}],
            rate_limit={"policies": [{"name": "all", "limits": ["5/second"], "tiers": tiers}]},
        )

    assert str(raised.value) == f"<dict>: clients[0].tier: {message}"


# -- admin input -------------------------------------------------------------------------------


async def unknown_key(gw: Any, key: str = "idem:stuck") -> str:
    """An outcome-unknown record in the gateway's store, as a lost answer leaves one."""
    store = gw.gateway.stack.idempotency_store
    now = gw.gateway.clock.now()
    begin = Begin(fingerprint="f", token=key, lease=30, ttl=3600, on_lease_expiry="unknown")
    await store.begin(key, begin, now)
    await store.finish(key, key, Outcome(Step.MARK_UNKNOWN), now)
    return key


BAD_QUERIES = [
    ("/admin/unknown?limit=abc", "limit: expected a whole number from 1 to 10000, got 'abc'"),
    ("/admin/unknown?limit=0", "limit: expected a whole number from 1 to 10000, got '0'"),
    ("/admin/unknown?limit=10001", "limit: expected a whole number from 1 to 10000"),
    ("/admin/unknown?limit=-5", "limit: expected a whole number from 1 to 10000"),
    ("/admin/unknown?limit=%C2%B2", "limit: expected a whole number from 1 to 10000"),
    ("/admin/unknown?limit=", "limit: expected 1 to 1024 printable characters"),
    ("/admin/unknown?limit=1&limit=2", "limit: expected once, got it twice"),
    ("/admin/unknown?limt=5", "unknown parameter 'limt'; expected limit"),
    ("/admin/unknown?limit", "expected a query string of name=value pairs"),
    ("/admin/unknown?limit=%FF", "expected a query string of name=value pairs"),
    ("/admin/keys?store_key=a%0Ab", "store_key: expected 1 to 1024 printable characters"),
    ("/admin/keys?store_key=a&key=b", "expected ?store_key=S or ?principal=P&key=K[&route=R]"),
    ("/admin/limits?client=acme&principal=p", "expected ?client=NAME or ?principal=P, not both"),
]


@pytest.mark.parametrize(("path", "reason"), BAD_QUERIES)
async def test_bad_admin_queries_are_400_problems(path: str, reason: str) -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        response = await gw.admin.get(path, headers=ADMIN_HEADERS)

    body = problem(response, 400, "admin_bad_request")
    assert reason in body["detail"]


async def test_a_good_limit_lists_unknown_keys() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        key = await unknown_key(gw)
        response = await gw.admin.get("/admin/unknown?limit=10000", headers=ADMIN_HEADERS)

    assert [r["store_key"] for r in response.json()["unknown"]] == [key]


BAD_RESOLVES: list[tuple[Any, str]] = [
    ({"status": 99999}, "status: expected a final HTTP status from 200 to 599, got 99999"),
    ({"status": 100}, "status: expected a final HTTP status from 200 to 599, got 100"),
    ({"status": 103}, "status: expected a final HTTP status from 200 to 599"),
    ({"status": "201"}, "status: expected a final HTTP status from 200 to 599, got '201'"),
    ({"status": True}, "status: expected a final HTTP status from 200 to 599, got True"),
    ({"status": 201.0}, "status: expected a final HTTP status from 200 to 599"),
    ({}, "status: expected a final HTTP status from 200 to 599, got None"),
    ({"status": 201, "content_type": "application/json\r\nSet-Cookie: x=1"},
     "content_type: expected a media type such as 'application/json'"),
    ({"status": 201, "content_type": "text/plain\x00"}, "content_type: expected a media type"),
    ({"status": 201, "content_type": "t\u00e9xt/plain"}, "content_type: expected a media type"),
    ({"status": 201, "content_type": 7}, "content_type: expected a media type"),
    ({"status": 201, "body": "{x:1}"}, "body: expected JSON, as content_type"),
    ({"status": 201, "body": "{", "content_type": "application/problem+json"},
     "body: expected JSON, as content_type 'application/problem+json' says"),
    ({"status": 201, "body": "x" * (1024 * 1024 + 1), "content_type": "text/plain"},
     "body: expected at most 1048576 bytes"),
    ({"status": 204, "body": "x", "content_type": "text/plain"},
     "body: a 204 answer has no body"),
    ({"status": 201, "bdy": {"id": 7}}, "unknown fields ['bdy']"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "reason"), BAD_RESOLVES)
async def test_resolve_refuses_what_must_never_be_stored(
    fields: dict[str, Any], reason: str
) -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        key = await unknown_key(gw)
        response = await gw.admin.post(
            "/admin/keys/resolve", headers=ADMIN_HEADERS, json={"store_key": key, **fields}
        )
        record = await gw.admin.get(f"/admin/keys?store_key={key}", headers=ADMIN_HEADERS)

    body = problem(response, 400, "admin_bad_request")
    assert reason in body["detail"]
    assert record.json()["state"] == "unknown"  # nothing was stored


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"store_key": "idem:stuck", "status": NaN}', "expected a JSON object"),
        (b'{"store_key": "idem:stuck", "status": 201, "body": Infinity}', "expected a JSON object"),
        (b'{"store_key": "idem:stuck", "status": 201', "expected a JSON object"),
        (
            b'{"store_key": "idem:stuck", "status": 201, "body": "\\ud800"}',
            "surrogates not allowed",
        ),
        (b"\xff\xfe", "expected a JSON object"),
        (b'{"store_key": "idem:\\u0000stuck", "status": 201}', "store_key: expected 1 to 1024"),
        (b'{"store_key": "", "status": 201}', "store_key: expected 1 to 1024"),
        (b'{"store_key": 5, "status": 201}', "store_key: expected 1 to 1024"),
        (b" " * (4 * 1024 * 1024 + 1), "expected a body of at most 4194304 bytes"),
    ],
)
async def test_resolve_refuses_a_malformed_body(content: bytes, reason: str) -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        key = await unknown_key(gw)
        response = await gw.admin.post(
            "/admin/keys/resolve", headers=ADMIN_HEADERS, content=content
        )
        record = await gw.admin.get(f"/admin/keys?store_key={key}", headers=ADMIN_HEADERS)

    assert reason in problem(response, 400, "admin_bad_request")["detail"]
    assert record.json()["state"] == "unknown"


@pytest.mark.parametrize(
    ("fields", "stored"),
    [
        ({"status": 201, "body": {"id": 7}},
         (201, ((b"content-type", b"application/json"), (b"content-length", b"9")), b'{"id": 7}')),
        ({"status": 200, "body": "done", "content_type": "text/plain; charset=utf-8"},
         (200, ((b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"4")),
          b"done")),
        ({"status": 202}, (202, ((b"content-length", b"0"),), b"")),
        ({"status": 204}, (204, (), b"")),
    ],
)  # fmt: skip
async def test_resolve_stores_a_checked_answer(fields: dict[str, Any], stored: Any) -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        key = await unknown_key(gw)
        response = await gw.admin.post(
            "/admin/keys/resolve", headers=ADMIN_HEADERS, json={"store_key": key, **fields}
        )
        record = await gw.gateway.stack.idempotency_store.get(key, gw.gateway.clock.now())

    assert response.json()["result"] == "resolved"
    assert record is not None
    assert record.response == stored


async def test_release_refuses_unknown_fields_and_keeps_the_record() -> None:
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        key = await unknown_key(gw)
        response = await gw.admin.post(
            "/admin/keys/release", headers=ADMIN_HEADERS, json={"store_key": key, "force": True}
        )
        record = await gw.admin.get(f"/admin/keys?store_key={key}", headers=ADMIN_HEADERS)

    assert "unknown fields ['force']" in problem(response, 400, "admin_bad_request")["detail"]
    assert record.json()["state"] == "unknown"


# -- /admin/config shows what runs -------------------------------------------------------------


async def test_the_admin_config_fills_in_the_idempotency_policy_in_force() -> None:
    config = gateway_config(
        idempotency={"ttl": 600},
        routes=[
            {"match": "POST /charges", "idempotency": {"lease": 5}},
            {"match": "GET /health", "idempotency": False},
            {"match": "POST /refunds"},
        ],
    )
    async with running(config, upstream=EchoUpstream()) as gw:
        shown = (await gw.admin.get("/admin/config", headers=ADMIN_HEADERS)).json()["config"]

    defaults = shown["idempotency"]
    assert (defaults["ttl"], defaults["lease"]) == (600, 60)
    assert defaults["on_server_error"] == "unknown"  # the gateway's own default, not null
    assert defaults["methods"] == ["PATCH", "POST"]
    assert defaults["release_statuses"] == [408, 409, 425, 429, 503]
    charges, health, refunds = shown["routes"]
    assert (charges["idempotency"]["ttl"], charges["idempotency"]["lease"]) == (600, 5)
    assert charges["idempotency"]["on_server_error"] == "unknown"
    inherited = ("methods", "required", "rollout", "scope", "ignore_fields", "on_lease_expiry",
                 "release_statuses", "wait", "header", "on_store_error")  # fmt: skip
    assert {name: charges["idempotency"][name] for name in inherited} == {
        name: defaults[name] for name in inherited
    }
    assert health["idempotency"]["enabled"] is False
    assert refunds["idempotency"] is None  # no table: [idempotency] applies


async def test_the_admin_config_shows_the_running_values() -> None:
    running_values = {"server": {"host": "0.0.0.0", "port": 43210, "workers": 3}}
    async with running(gateway_config(), upstream=EchoUpstream()) as gw:
        admin = AdminApp(gw.gateway, running=running_values)
        transport = httpx.ASGITransport(app=admin)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
            shown = (await client.get("/admin/config", headers=ADMIN_HEADERS)).json()["config"]

    assert shown["server"] | running_values["server"] == shown["server"]
    assert shown["server"]["max_request_body"] == 1024 * 1024  # the rest as the file says


@pytest.mark.slow
def test_surefoot_serve_shows_its_port_override_in_the_admin_config(tmp_path: Path) -> None:
    config = toml_config("http://127.0.0.1:9", "memory://", "[server]\nport = 1\n")
    process = surefoot_serve(tmp_path, config)
    try:
        process.wait_ready()
        shown = process.admin_get("/admin/config")["config"]
    finally:
        process.server.stop()

    assert shown["server"]["port"] == int(process.url.rpartition(":")[2])
    assert shown["admin"]["port"] == int(process.admin.rpartition(":")[2])
    assert shown["server"]["workers"] == 1


# -- check-config: what would fail at start ----------------------------------------------------

VALID = """\
[upstream]
{upstream}

[stores]
default = "{store}"

[admin]
token = "t"
"""


def check(
    tmp_path: Path, upstream: str = 'url = "http://127.0.0.1:9"', store: str = "memory://"
) -> tuple[Path, Result]:
    path = tmp_path / "gateway.toml"
    path.write_text(VALID.format(upstream=upstream, store=store))
    return path, CliRunner().invoke(main, ["check-config", str(path)])


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("surefoot_no_such_module:app",
         "ModuleNotFoundError: No module named 'surefoot_no_such_module'"),
        ("surefoot.cli:no_such_app", "AttributeError: module 'surefoot.cli' has no attribute"),
        ("surefoot.cli:__doc__", "expected an ASGI app, 'surefoot.cli:__doc__' is not callable"),
    ],
)  # fmt: skip
def test_check_config_refuses_an_app_that_cannot_be_imported(
    tmp_path: Path, app: str, message: str
) -> None:
    path, result = check(tmp_path, upstream=f'app = "{app}"')

    assert result.exit_code == 1
    assert f"Error: {path}: upstream.app: " in result.output
    assert message in result.output
    assert "OK" not in result.output


def test_check_config_refuses_an_app_that_fails_while_it_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_upstream_app.py").write_text("raise RuntimeError('no database')\n")
    monkeypatch.chdir(tmp_path)  # the app is imported from the working directory

    _, result = check(tmp_path, upstream='app = "broken_upstream_app:app"')

    assert result.exit_code == 1
    assert "cannot import 'broken_upstream_app:app' (RuntimeError: no database)" in result.output


def test_check_config_imports_a_good_app(tmp_path: Path) -> None:
    path, result = check(tmp_path, upstream='app = "examples.legacy_payments.app:app"')

    assert result.exit_code == 0, result.output
    assert f"{path}: OK: upstream app examples.legacy_payments.app:app" in result.output


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("memory://?max_records=lots", "stores.default (memory://?max_records=lots): store URL: "
         "max_records: expected an integer, got 'lots'"),
        ("sqlite:///gw.db?synchronous=SOMETIMES", "stores.default (sqlite:///gw.db?synchronous="
         "SOMETIMES): store URL: synchronous: expected NORMAL or FULL, got 'SOMETIMES'"),
        ("sqlite:///no/such/dir/gw.db", "stores.default (sqlite:///no/such/dir/gw.db): "
         "no directory 'no/such/dir' for the database file"),
        ("redis://:PW-1@127.0.0.1:6379/0?password=PW-2&bogus=1",
         "stores.default (redis://:***@127.0.0.1:6379/0?password=***&bogus=1): "),
    ],
)  # fmt: skip
def test_check_config_refuses_a_store_the_start_would_refuse(
    tmp_path: Path, store: str, message: str
) -> None:
    path, result = check(tmp_path, store=store)

    assert result.exit_code == 1, result.output
    assert f"Error: {path}: {message}" in result.output
    assert "PW-" not in result.output


def test_check_config_refuses_a_store_url_that_cannot_be_split(tmp_path: Path) -> None:
    # urlsplit's ValueError ("Invalid IPv6 URL") used to escape as a traceback.
    path, result = check(tmp_path, store="redis://u:PW-1@[::1/0")

    assert result.exit_code == 1, result.output
    assert (
        f"Error: {path}:5: stores.default: store URL 'redis://u:***@[::1/0' cannot be read: "
        "expected a host name, an IPv4 address or an IPv6 address in brackets" in result.output
    )
    assert "PW-" not in result.output
    assert not isinstance(result.exception, ValueError)


async def test_a_reload_to_a_store_url_that_cannot_be_split_is_a_422(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(toml_config("http://upstream.test", "memory://"))
    async with running(load_config(path), upstream=EchoUpstream(), config_path=str(path)) as gw:
        path.write_text(toml_config("http://upstream.test", "redis://u:PW-1@[::1/0"))
        answer = await gw.admin.post("/admin/reload", headers=ADMIN_HEADERS)
        assert gw.gateway.generation == 0  # the configuration in force stays

    body = problem(answer, 422, "config_rejected")
    assert "stores.default: store URL 'redis://u:***@[::1/0' cannot be read" in body["detail"]
    assert "PW-" not in answer.text


def test_check_config_creates_no_database_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    _, result = check(tmp_path, store="sqlite:///gw.db?synchronous=FULL")

    assert result.exit_code == 0, result.output
    assert not (tmp_path / "gw.db").exists()


def test_check_config_warns_of_an_unreachable_store(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    path, result = check(tmp_path, store=f"redis://:PW-1@127.0.0.1:{port}/0?timeout=0.05")

    assert result.exit_code == 0, result.output
    assert (
        f"{path}: warning: stores.default (redis://:***@127.0.0.1:{port}/0?timeout=0.05): "
        "did not answer within 2 s" in result.output
    )
    assert f"{path}: OK: " in result.output
    assert "PW-" not in result.output


def test_check_config_reaches_a_running_store(tmp_path: Path, redis_url: str) -> None:
    _, result = check(tmp_path, store=redis_url)

    assert result.exit_code == 0, result.output
    assert "warning" not in result.output


@pytest.mark.slow
def test_surefoot_serve_refuses_an_app_that_cannot_be_imported_before_it_binds(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(VALID.format(upstream='app = "surefoot_no_such_module:app"', store="memory://"))
    surefoot = str(Path(sys.executable).with_name("surefoot"))
    command = [surefoot, "serve", "--config", str(path), "--port", "0", "--admin-port", "0"]

    result = subprocess.run(command, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert result.stderr == (
        "Error: upstream.app: cannot import 'surefoot_no_such_module:app' "
        "(ModuleNotFoundError: No module named 'surefoot_no_such_module')\n"
    )


@pytest.mark.parametrize("login", [":PW-1", "surefoot-nobody:PW-1"])
def test_check_config_refuses_a_redis_that_refuses_its_login(
    tmp_path: Path, redis_url: str, login: str
) -> None:
    # A refused AUTH is the server's answer, the same at every start: it used to be a
    # warning that the store "did not answer within 2 s".
    parts = urlsplit(redis_url)
    url = parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port}").geturl()
    path, result = check(tmp_path, store=url)

    assert result.exit_code == 1, result.output
    masked = url.replace("PW-1", "***")
    assert f"Error: {path}: stores.default ({masked}): refused the connection (" in result.output
    assert "WRONGPASS" in result.output or "ERR AUTH" in result.output
    assert "did not answer" not in result.output
    assert "PW-" not in result.output


@pytest.mark.parametrize(
    ("part", "value", "reason"),
    [
        ("user", "surefoot_no_such_role", 'FATAL: role "surefoot_no_such_role" does not exist'),
        ("dbname", "surefoot_no_such_db", 'FATAL: database "surefoot_no_such_db" does not exist'),
    ],
)
def test_check_config_refuses_a_postgres_that_refuses_the_connection(
    tmp_path: Path, postgres_dsn: str, part: str, value: str, reason: str
) -> None:
    # It used to say "did not answer within 2 s (CancelledError)": the pool kept the
    # server's reason to itself.
    parts = urlsplit(postgres_dsn)
    if part == "user":
        parts = parts._replace(netloc=f"{value}:PW-1@{parts.hostname}:{parts.port}")
    else:
        parts = parts._replace(path=f"/{value}")
    path, result = check(tmp_path, store=parts.geturl())

    assert result.exit_code == 1, result.output
    assert f"Error: {path}: stores.default (" in result.output
    assert "refused the connection (OperationalError: connection failed: " in result.output
    assert reason in result.output
    assert "CancelledError" not in result.output
    assert "PW-" not in result.output


def test_check_config_refuses_an_unmigrated_postgres_schema(
    tmp_path: Path, postgres_dsn: str
) -> None:
    separator = "&" if "?" in postgres_dsn else "?"
    path, result = check(tmp_path, store=f"{postgres_dsn}{separator}schema=surefoot_never_made")

    assert result.exit_code == 1, result.output
    assert f"Error: {path}: stores.default (" in result.output
    assert "schema 'surefoot_never_made' lacks migrations" in result.output
    assert "run `surefoot migrate --store URL`" in result.output
