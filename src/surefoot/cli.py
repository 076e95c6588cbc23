"""The ``surefoot`` command line (also ``python -m surefoot``).

Only commands that work are listed: ``serve`` runs the gateway, ``decide`` the decision
service an edge proxy asks (``surefoot.edge``), ``check-config``
validates its policy file, ``errors`` prints the problem catalogue, ``metrics`` the
Prometheus metrics, ``keys`` lets an operator inspect and settle idempotency records in a
store, ``webhooks`` manages the sending side (``surefoot.outbox``: its tables, endpoints,
deliveries and ``worker``) and looks up and forgets the events a gateway's
``[[webhooks.receive]]`` endpoint received (``inspect``, ``forget``), ``sagas`` lists,
shows and settles sagas (``surefoot.saga``) and runs a ``worker``, ``reconcile`` sweeps
what may need a person (``surefoot.gateway.Sweeper``; exit status 3 when something
does), ``probe`` checks whether a partner's API honours idempotency keys and its rate
limits (exit status 1 when a required check fails, 2 for an invalid file), ``alerts
--prometheus`` writes alerting rules built from a policy file, ``docs``
the page its API's consumers read (limits, errors, retries), and
``migrate`` creates or upgrades a PostgreSQL store's tables.

Rule 1: a command that needs an extra says so in one line before importing anything of it
        (``surefoot chaos needs the 'client' extra: pip install 'surefoot[client]'
        (missing: httpx)``), never with a traceback. ``errors``, ``metrics``, ``keys``,
        ``migrate`` and the outbox's ``webhooks`` commands need none (a Redis or
        PostgreSQL database needs its driver's extra); ``serve``, ``decide``, ``check-config``,
        ``webhooks inspect``, ``webhooks forget``, ``reconcile``, ``alerts`` and ``docs``
        need ``gateway``; ``chaos``, ``probe`` and ``webhooks worker`` need ``client`` (and
        ``metrics`` for ``--metrics-port``).
Rule 2: every input is checked before anything is stored; an invalid one is a usage error
        naming the option (``surefoot keys resolve`` stores only what
        ``surefoot._operator`` accepts).
Rule 3: a webhook signing secret is never a command-line value (shell history and ``ps``
        keep those): ``--secret-env VAR`` reads it from the environment, and
        ``--generate-secret`` prints the one it makes once. No command shows a stored one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

import click
from rich.console import Console
from rich.table import Table

from surefoot._masking import masked_text, masked_url, split_url
from surefoot._operator import operator_response, operator_store_key
from surefoot._version import __version__
from surefoot.clock import SystemClock
from surefoot.errors import (
    ConfigurationError,
    StoreUnavailable,
    SurefootError,
    catalogue,
    catalogue_markdown,
    problem_type_uri,
)
from surefoot.idempotency import Record, State, classify
from surefoot.metrics import METRICS, metrics_markdown
from surefoot.outbox import DeliveryState
from surefoot.storage import IdempotencyStore, store_from_url

__all__ = ["main"]

#: The modules of each extra that the commands import (as ``pyproject.toml`` lists them).
_EXTRAS = {
    "client": ("httpx", "h11", "pydantic"),
    "gateway": ("httpx", "h11", "pydantic", "uvicorn", "httptools", "prometheus_client"),
    "metrics": ("prometheus_client",),
    "probe": ("httpx", "h11", "pydantic", "http_sf"),
    "edge": ("httpx", "pydantic", "uvicorn", "grpc", "envoy"),
}


def _need(command: str, extra: str) -> None:
    """Stop with one line when the extra ``command`` needs is not installed (Rule 1)."""
    missing = ", ".join(m for m in _EXTRAS[extra] if importlib.util.find_spec(m) is None)
    if missing:
        raise click.ClickException(
            f"surefoot {command} needs the {extra!r} extra: "
            f"pip install 'surefoot[{extra}]' (missing: {missing})"
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="surefoot")
def main() -> None:
    """surefoot: idempotency keys and more, so HTTP APIs survive the real world."""


@main.command()
@click.option("--markdown", "fmt", flag_value="markdown", help="Print docs/errors.md.")
@click.option("--json", "fmt", flag_value="json", help="Print the catalogue as JSON.")
def errors(fmt: str | None) -> None:
    """List every problem type surefoot can answer with."""
    if fmt == "markdown":
        click.echo(catalogue_markdown(), nl=False)
        return
    if fmt == "json":
        entries = [
            {
                "code": c.code,
                "status": c.status,
                "title": c.title,
                "type": problem_type_uri(c.code),
                "retryable": c.retryable,
            }
            for c in catalogue()
        ]
        click.echo(json.dumps(entries, indent=2))
        return
    table = Table("code", "status", "retry?", "title")
    for c in catalogue():
        table.add_row(c.code, str(c.status), "yes" if c.retryable else "no", c.title)
    _console().print(table)


@main.command()
@click.option("--markdown", "fmt", flag_value="markdown", help="Print docs/metrics.md's table.")
def metrics(fmt: str | None) -> None:
    """List every Prometheus metric surefoot exposes."""
    if fmt == "markdown":
        click.echo(metrics_markdown(), nl=False)
        return
    table = Table("metric", "type", "labels", "group")
    for spec in METRICS:
        table.add_row(spec.name, spec.kind, ", ".join(spec.labels), spec.group)
    _console().print(table)


@main.group()
def keys() -> None:
    """Inspect and settle idempotency records (for example outcome-unknown keys)."""


_STORE = click.option(
    "--store",
    "store_url",
    required=True,
    envvar="SUREFOOT_STORE",
    help="Store URL, e.g. sqlite:///idempotency.db (or $SUREFOOT_STORE).",
)


def _store_parts(store_url: str, hint: str = "--store") -> SplitResult:
    """``--store`` split, or a usage error quoting it masked."""
    try:
        return split_url(store_url)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _run(store_url: str, work: Any, *, hint: str = "--store", where: str = "") -> Any:
    """``work(store, now)`` on the store at ``store_url``, closed after; ``hint`` names
    the option the URL came from in a usage error, ``where`` prefixes its message."""
    parts = _store_parts(store_url, hint)
    if parts.scheme == "sqlite" and not Path(parts.path[1:]).exists():
        # Opening would create an empty database and hide a typo in the path.
        raise click.BadParameter(f"{where}no database file at {parts.path[1:]!r}", param_hint=hint)

    async def go() -> Any:
        try:
            store = store_from_url(store_url)
        except ConfigurationError as exc:
            raise click.BadParameter(f"{where}{exc}", param_hint=hint) from None
        try:
            opener = getattr(store, "open", None)
            if opener is not None:
                # A network store connects now, with time to spare, rather than spend the
                # first call's short timeout connecting.
                await opener()
            return await work(store, SystemClock().now())
        except StoreUnavailable as exc:
            cause = masked_text(" ".join(str(exc.__cause__).split()), store_url)
            raise click.ClickException(f"the store is unavailable ({cause})") from None
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            await store.aclose()

    return asyncio.run(go())


@keys.command("list")
@_STORE
@click.option(
    "--state",
    type=click.Choice([s.value for s in State if s is not State.ABSENT]),
    help="Only records in this state.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def list_keys(store_url: str, state: str | None, limit: int, as_json: bool) -> None:
    """List live records, oldest first."""

    async def work(store: IdempotencyStore, now: float) -> list[tuple[str, Record]]:
        return await store.records(now, state=State(state) if state else None, limit=limit)

    rows: list[tuple[str, Record]] = _run(store_url, work)
    if as_json:
        click.echo(json.dumps([_record_json(k, r) for k, r in rows], indent=2))
        return
    table = Table("store key", "state", "generation", "status", "expires in")
    clock = SystemClock().now()
    for key, record in rows:
        status = str(record.response.status) if record.response else "-"
        table.add_row(
            key,
            record.state.value,
            str(record.generation),
            status,
            f"{max(0, record.expires_at - clock):.0f}s",
        )
    _console().print(table)


def _record_json(key: str, record: Record) -> dict[str, Any]:
    return {
        "store_key": key,
        "state": record.state.value,
        "generation": record.generation,
        "status": record.response.status if record.response else None,
        "lease_expires_at": record.lease_expires_at,
        "expires_at": record.expires_at,
    }


def _console() -> Console:
    # Piped output keeps whole store keys and codes: they are meant to be copied.
    return Console() if sys.stdout.isatty() else Console(width=200)


@keys.command("forget")
@_STORE
@click.argument("store_key")
def forget_key(store_url: str, store_key: str) -> None:
    """Delete a record so that the next request with its key executes again."""
    _store_key(store_key)

    async def work(store: IdempotencyStore, now: float) -> bool:
        return await store.forget(store_key, now)

    if not _run(store_url, work):
        raise click.ClickException(f"no live record under {store_key}")
    click.echo(f"forgot {store_key}")


@keys.command("resolve")
@_STORE
@click.argument("store_key")
@click.option(
    "--status",
    type=click.IntRange(200, 599),
    required=True,
    help="Status of the response to replay from now on.",
)
@click.option("--body", default="", help="Body to replay (JSON text).")
@click.option("--content-type", default="application/json", show_default=True)
def resolve_key(store_url: str, store_key: str, status: int, body: str, content_type: str) -> None:
    """Settle an outcome-unknown (or abandoned) key with the response to replay."""
    _store_key(store_key)
    try:
        response = operator_response(status, body.encode(), content_type)
    except ValueError as exc:  # a lone surrogate in --body (UnicodeEncodeError) too
        field = str(exc).partition(":")[0]
        hint = {"body": "--body", "content_type": "--content-type"}.get(field, "--status")
        raise click.BadParameter(str(exc), param_hint=hint) from None

    async def work(store: IdempotencyStore, now: float) -> bool:
        return await store.resolve(store_key, response, now)

    if not _run(store_url, work):
        raise click.ClickException(
            f"{store_key} is not unknown or abandoned (absent, completed, or still in flight)"
        )
    click.echo(f"resolved {store_key} with status {status}")


@keys.command("purge")
@_STORE
@click.option("--limit", type=click.IntRange(min=1), default=10_000, show_default=True)
def purge_keys(store_url: str, limit: int) -> None:
    """Delete expired records now (stores also do this by themselves, in small batches)."""

    async def work(store: IdempotencyStore, now: float) -> int:
        return await store.purge(now, limit=limit)

    click.echo(f"purged {_run(store_url, work)} expired records")


@main.group()
def webhooks() -> None:
    """Send webhooks from an outbox (init, endpoints, deliveries, worker...), and look up
    and forget the events a gateway's webhook endpoints received (inspect, forget)."""


_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The gateway's policy file (TOML), whose [[webhooks.receive]] names the endpoint.",
)


def _webhook_event(command: str, config_path: str, name: str, event_id: str) -> Any:
    """The store URL of endpoint ``name``, the event's store key and ``stores.NAME: ``."""
    gateway = _gateway(f"webhooks {command}")
    try:
        config = gateway.load_config(config_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    webhook = config.webhooks.get(name)
    if webhook is None:
        known = ", ".join(config.webhooks) or "none"
        raise click.BadParameter(
            f"expected the name of a [[webhooks.receive]] table of {config_path} ({known}), "
            f"got {name!r}",
            param_hint="NAME",
        )
    from surefoot.webhooks import is_event_id, webhook_store_key

    if not is_event_id(event_id):
        raise click.BadParameter(
            "expected 1 to 255 printable ASCII characters, as event ids are",
            param_hint="EVENT_ID",
        )
    store_key = webhook_store_key(name, event_id)
    return config.store_url(webhook.store), store_key, f"stores.{webhook.store}: "


@webhooks.command("inspect")
@_CONFIG
@click.argument("name")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def inspect_webhook(config_path: str, name: str, event_id: str, as_json: bool) -> None:
    """Show what became of event EVENT_ID at endpoint NAME: its state (absent,
    in_flight, lease_expired, completed) and the status of the answer stored for it."""
    store_url, store_key, where = _webhook_event("inspect", config_path, name, event_id)
    from surefoot.gateway.admin import webhook_record

    async def work(store: IdempotencyStore, now: float) -> dict[str, Any]:
        record = await store.get(store_key, now)
        found: dict[str, Any] = webhook_record(store_key, record, now)
        return found

    found = _run(store_url, work, hint="--config", where=where)
    found = {"endpoint": name, "event_id": event_id, **found}
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    table = Table("endpoint", "event id", "state", "status", "expires in")
    status = found["status"]
    expires = found.get("expires_in")
    table.add_row(
        name,
        event_id,
        found["state"],
        "-" if status is None else str(status),
        "-" if expires is None else f"{expires:.0f}s",
    )
    _console().print(table)


@webhooks.command("forget")
@_CONFIG
@click.argument("name")
@click.argument("event_id")
def forget_webhook(config_path: str, name: str, event_id: str) -> None:
    """Forget event EVENT_ID at endpoint NAME, so that the sender's next delivery of it
    (a retry, or a resend from its dashboard) runs it again.

    An event whose delivery is still running (in flight, its lease not run out) is not
    forgotten: a delivery meanwhile would run it twice.
    """
    store_url, store_key, where = _webhook_event("forget", config_path, name, event_id)

    async def work(store: IdempotencyStore, now: float) -> tuple[State, Record | None, bool]:
        record = await store.get(store_key, now)
        state = classify(record, now)
        if state in (State.ABSENT, State.IN_FLIGHT):
            return state, record, False
        return state, record, await store.forget(store_key, now)

    state, record, forgotten = _run(store_url, work, hint="--config", where=where)
    if state is State.IN_FLIGHT:
        assert record is not None
        left = max(1, math.ceil(record.lease_expires_at - SystemClock().now()))
        raise click.ClickException(
            f"event {event_id} of {name} is being processed (its lease runs out in {left} s): "
            "nothing forgotten; try again once its delivery has ended"
        )
    if not forgotten:
        raise click.ClickException(f"no live record of event {event_id} at {name}")
    status = record.response.status if record is not None and record.response else None
    click.echo(
        f"forgot event {event_id} of {name} (it was {state.value}"
        + (f", status {status}" if status is not None else "")
        + "): the sender's next delivery runs it again"
    )


# -- sending: the outbox (surefoot.outbox) ---------------------------------------------------

_DATABASE = click.option(
    "--database",
    envvar="SUREFOOT_OUTBOX_DATABASE",
    help="The outbox's database: sqlite:///path or postgresql://... "
    "(or $SUREFOOT_OUTBOX_DATABASE).",
)
_PREFIX = click.option(
    "--prefix",
    default="surefoot_webhook",
    show_default=True,
    help="The outbox tables' name prefix.",
)
_AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
_REASON = re.compile(r"[\x20-\x7e]{1,200}")
_DELIVERY_TIMES = ("next_at", "created_at", "updated_at")


def _utc(moment: float | None, *, precise: bool = False) -> str | None:
    """``moment`` (a timestamp) as UTC ISO 8601 (``2026-12-06T14:56:36Z``), None as None."""
    if moment is None:
        return None
    when = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    return when.isoformat(timespec="milliseconds" if precise else "seconds").replace("+00:00", "Z")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _hinted(exc: ConfigurationError, hints: dict[str, str]) -> click.ClickException:
    """``exc`` as a usage error naming the option its field came from (Rule 2), or as a
    plain error when no option gave it."""
    field = str(exc).partition(":")[0].partition("[")[0]
    hint = hints.get(field)
    if hint is None:
        return click.ClickException(str(exc))
    return click.BadParameter(str(exc), param_hint=hint)


def _database_given(database: str | None, env: str, whose: str, init: str, create: bool) -> str:
    """The ``--database`` URL of a command, checked before it is opened: given (or ``$env``),
    and, for SQLite unless the command creates the tables (``create``), an existing file."""
    if database is None:
        raise click.UsageError(
            f"expected --database URL or ${env}: the {whose} database "
            "(sqlite:///path or postgresql://...)"
        )
    if not create and database.startswith("sqlite://"):
        path = database.removeprefix("sqlite://").removeprefix("/")
        if path and path != ":memory:" and not Path(path).exists():
            # Opening would create an empty database and hide a typo in the path.
            raise click.BadParameter(
                f"no database file at {path!r} ({init} creates one)", param_hint="--database"
            )
    return database


def _unavailable(
    exc: StoreUnavailable, database: str, what: str, init: str
) -> click.ClickException:
    """A database failure as one line (the driver's first line, the URL's password masked)."""
    cause = exc.__cause__ or exc
    # The driver's first line says what failed; the rest quotes SQL or gives advice.
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    text = masked_text(" ".join(first.split()), database)
    missing = "no such table" in text or "does not exist" in text
    advice = f": create the tables with {init}" if missing else ""
    return click.ClickException(f"the {what} database is unavailable ({text}){advice}")


@contextlib.contextmanager
def _outbox(
    database: str | None,
    prefix: str,
    *,
    hints: dict[str, str] | None = None,
    create: bool = False,
    names_endpoints: bool = True,
) -> Iterator[Any]:
    """The ``Outbox`` at ``database``, closed after; every error it raises becomes one
    line: a ``ConfigurationError`` naming an option is a usage error (exit 2), an unknown
    endpoint (a ``KeyError``, where ``names_endpoints``) or an unavailable database an
    error (exit 1)."""
    database = _database_given(
        database, "SUREFOOT_OUTBOX_DATABASE", "outbox's", "surefoot webhooks init", create
    )
    from surefoot.outbox import Outbox

    try:
        outbox = Outbox(database, prefix=prefix)
    except ConfigurationError as exc:
        raise _hinted(exc, {"database": "--database", "prefix": "--prefix"}) from None
    try:
        yield outbox
    except ConfigurationError as exc:
        raise _hinted(exc, hints or {}) from None
    except KeyError as exc:
        if not names_endpoints:
            raise
        raise click.ClickException(f"no endpoint named {exc.args[0]!r}") from None
    except StoreUnavailable as exc:
        raise _unavailable(exc, database, "outbox", "surefoot webhooks init") from None
    finally:
        with contextlib.suppress(Exception):
            outbox.close()


def _secrets_of(env_vars: tuple[str, ...], generate: bool, *, one: bool = False) -> list[str]:
    """The secrets named by ``--secret-env`` (read from the environment, never from the
    command line, which shell history keeps) or one made by ``--generate-secret``."""
    if bool(env_vars) == generate:
        raise click.UsageError("expected either --secret-env VAR or --generate-secret")
    if one and len(env_vars) > 1:
        raise click.BadParameter("expected one variable", param_hint="--secret-env")
    if generate:
        return ["whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")]
    found = []
    for var in env_vars:
        value = os.environ.get(var)
        if not value:
            raise click.BadParameter(
                f"the environment variable {var} is not set or empty", param_hint="--secret-env"
            )
        found.append(value)
    return found


def _show_generated(secret: str) -> None:
    click.echo(f"signing secret (shown once, keep it now and give it to the consumer): {secret}")


_ENDPOINT_HINTS = {
    "name": "NAME",
    "tenant": "--tenant",
    "url": "--url",
    "secrets": "--secret-env",
    "secret": "--secret-env",
    "event_types": "--event-type",
    "concurrency": "--concurrency",
    "keep_old_for": "--keep-old-for",
}


@webhooks.command("init")
@_DATABASE
@_PREFIX
def init_outbox(database: str | None, prefix: str) -> None:
    """Create the outbox's tables (those that do not exist yet)."""
    with _outbox(database, prefix, create=True, names_endpoints=False) as outbox:
        outbox.create_tables()
    tables = ", ".join(f"{prefix}_{t}" for t in ("endpoints", "messages", "deliveries", "attempts"))
    click.echo(f"the outbox tables are ready in {masked_url(outbox.database)}: {tables}")


@webhooks.command("endpoints")
@_DATABASE
@_PREFIX
@click.option("--tenant", help="Only this tenant's endpoints.")
@_AS_JSON
def list_endpoints(database: str | None, prefix: str, tenant: str | None, as_json: bool) -> None:
    """List the endpoints webhooks are sent to (their secrets are never shown)."""
    with _outbox(database, prefix) as outbox:
        found = outbox.endpoints(tenant=tenant)
    if as_json:
        rows = [
            {**e.as_dict(), "failing_since": _utc(e.failing_since, precise=True)} for e in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        "name", "tenant", "url", "event types", "rate limit", "concurrency", "enabled",
        "disabled reason", "failing since", "secrets",
    )  # fmt: skip
    for e in found:
        table.add_row(
            e.name,
            e.tenant,
            e.url,
            "all" if e.event_types is None else ", ".join(e.event_types),
            _cell(e.rate_limit),
            str(e.concurrency),
            "yes" if e.enabled else "no",
            _cell(e.disabled_reason),
            _cell(_utc(e.failing_since)),
            str(e.secrets),
        )
    _console().print(table)


@webhooks.command("add-endpoint")
@_DATABASE
@_PREFIX
@click.argument("name")
@click.option("--url", required=True, help="Where deliveries are POSTed (http:// or https://).")
@click.option("--tenant", default="default", show_default=True)
@click.option(
    "--event-type",
    "event_types",
    multiple=True,
    help="An event type it receives (invoice.* for a family); repeat it; default: all.",
)
@click.option("--rate-limit", help="At most this many deliveries, e.g. 10/second.")
@click.option("--concurrency", type=int, default=10, show_default=True, help="Requests in flight.")
@click.option(
    "--secret-env",
    "secret_env",
    multiple=True,
    metavar="VAR",
    help="An environment variable holding a whsec_/whsk_ secret; repeat it for several.",
)
@click.option("--generate-secret", is_flag=True, help="Make a whsec_ secret and print it once.")
def add_endpoint(
    database: str | None,
    prefix: str,
    name: str,
    url: str,
    tenant: str,
    event_types: tuple[str, ...],
    rate_limit: str | None,
    concurrency: int,
    secret_env: tuple[str, ...],
    generate_secret: bool,
) -> None:
    """Register endpoint NAME: messages recorded from now on are sent to it."""
    if rate_limit is not None:
        from surefoot.ratelimit import parse_limit

        try:
            parse_limit(rate_limit)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--rate-limit") from None
    signing = _secrets_of(secret_env, generate_secret)
    with _outbox(database, prefix, hints=_ENDPOINT_HINTS) as outbox:
        endpoint = outbox.add_endpoint(
            name,
            url=url,
            secrets=signing,
            tenant=tenant,
            event_types=event_types or None,
            rate_limit=rate_limit,
            concurrency=concurrency,
        )
    click.echo(f"added endpoint {endpoint.name} ({endpoint.url}) of tenant {endpoint.tenant}")
    if generate_secret:
        _show_generated(signing[0])


@webhooks.command("enable")
@_DATABASE
@_PREFIX
@click.argument("name")
def enable_endpoint(database: str | None, prefix: str, name: str) -> None:
    """Enable endpoint NAME: its undelivered messages go out again, from now."""
    with _outbox(database, prefix) as outbox:
        outbox.enable(name)
    click.echo(f"enabled {name}")


@webhooks.command("disable")
@_DATABASE
@_PREFIX
@click.argument("name")
@click.option("--reason", default="manual", show_default=True, help="Why (shown by endpoints).")
def disable_endpoint(database: str | None, prefix: str, name: str, reason: str) -> None:
    """Stop sending to endpoint NAME; its messages wait until it is enabled."""
    if not _REASON.fullmatch(reason):
        raise click.BadParameter(
            "expected 1 to 200 printable ASCII characters", param_hint="--reason"
        )
    with _outbox(database, prefix) as outbox:
        endpoint = outbox.disable(name, reason)
    if endpoint.disabled_reason != reason:
        click.echo(f"{name} was already disabled ({endpoint.disabled_reason})")
        return
    click.echo(f"disabled {name} ({reason})")


@webhooks.command("rotate-secret")
@_DATABASE
@_PREFIX
@click.argument("name")
@click.option("--secret-env", "secret_env", multiple=True, metavar="VAR",
              help="An environment variable holding the new whsec_/whsk_ secret.")  # fmt: skip
@click.option("--generate-secret", is_flag=True, help="Make a whsec_ secret and print it once.")
@click.option(
    "--keep-old-for",
    type=click.FloatRange(0, 30 * 86400),
    default=86400.0,
    show_default=True,
    metavar="SECONDS",
    help="Keep signing with the current secrets this long, so consumers can switch.",
)
def rotate_secret(
    database: str | None,
    prefix: str,
    name: str,
    secret_env: tuple[str, ...],
    generate_secret: bool,
    keep_old_for: float,
) -> None:
    """Sign NAME's deliveries with a new secret, and with the current ones for a while."""
    (secret,) = _secrets_of(secret_env, generate_secret, one=True)
    with _outbox(database, prefix, hints=_ENDPOINT_HINTS) as outbox:
        endpoint = outbox.rotate_secret(name, secret, keep_old_for=keep_old_for)
    old = endpoint.secrets - 1
    kept = f"the {old} older ones" if old > 1 else "the older one"
    click.echo(
        f"{name} signs with the new secret"
        + (f" and, for {keep_old_for:g} s more, with {kept}" if old else "")
    )
    if generate_secret:
        _show_generated(secret)


@webhooks.command("deliveries")
@_DATABASE
@_PREFIX
@click.option("--endpoint", help="Only deliveries to this endpoint.")
@click.option("--state", type=click.Choice([s.value for s in DeliveryState]))
@click.option("--message", "message_id", help="Only deliveries of this message id.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@_AS_JSON
def list_deliveries(
    database: str | None,
    prefix: str,
    endpoint: str | None,
    state: str | None,
    message_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List deliveries (one message to one endpoint), newest first."""
    with _outbox(database, prefix) as outbox:
        if endpoint is not None:
            outbox.endpoint(endpoint)
        found = outbox.deliveries(
            endpoint=endpoint, state=state, message_id=message_id, limit=limit
        )
    if as_json:
        rows = [
            {
                **d.as_dict(),
                **{k: _utc(getattr(d, k), precise=True) for k in _DELIVERY_TIMES},
            }
            for d in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        "message id", "endpoint", "event type", "state", "attempts", "next attempt",
        "last status", "last error", "created", "updated",
    )  # fmt: skip
    for d in found:
        table.add_row(
            d.message_id,
            d.endpoint,
            d.event_type,
            d.state.value,
            str(d.attempts),
            _cell(_utc(d.next_at)),
            _cell(d.last_status),
            _cell(d.last_error),
            _cell(_utc(d.created_at)),
            _cell(_utc(d.updated_at)),
        )
    _console().print(table)


@webhooks.command("attempts")
@_DATABASE
@_PREFIX
@click.argument("message_id")
@click.option("--endpoint", help="Only attempts to this endpoint.")
@_AS_JSON
def list_attempts(
    database: str | None, prefix: str, message_id: str, endpoint: str | None, as_json: bool
) -> None:
    """List every attempt to deliver MESSAGE_ID, oldest first."""
    with _outbox(database, prefix) as outbox:
        if endpoint is not None:
            outbox.endpoint(endpoint)
        found = outbox.attempts(message_id, endpoint=endpoint)
        if not found and not outbox.deliveries(message_id=message_id, endpoint=endpoint, limit=1):
            to = f" to {endpoint}" if endpoint is not None else ""
            raise click.ClickException(f"no delivery of message {message_id}{to}")
    if as_json:
        rows = [{**a.as_dict(), "at": _utc(a.at, precise=True)} for a in found]
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("endpoint", "attempt", "at", "status", "error", "latency")
    for a in found:
        table.add_row(
            a.endpoint,
            str(a.attempt),
            _cell(_utc(a.at, precise=True)),
            _cell(a.status),
            _cell(a.error),
            f"{a.latency * 1000:.0f} ms",
        )
    _console().print(table)


@webhooks.command("resend")
@_DATABASE
@_PREFIX
@click.argument("message_id")
@click.option("--endpoint", required=True, help="The endpoint to send it to again.")
def resend_message(database: str | None, prefix: str, message_id: str, endpoint: str) -> None:
    """Send a delivered or failed message to an endpoint again, now, on a fresh schedule."""
    with _outbox(database, prefix) as outbox:
        outbox.endpoint(endpoint)
        try:
            queued = outbox.resend(message_id, endpoint)
        except KeyError as exc:  # no such message, or no delivery of it to the endpoint
            if exc.args[0] == message_id:
                raise click.ClickException(f"no message {message_id}") from None
            raise click.ClickException(
                f"message {message_id} was never sent to {endpoint}"
            ) from None
        if not queued:
            found = outbox.deliveries(message_id=message_id, endpoint=endpoint, limit=1)
            raise click.ClickException(
                f"message {message_id} to {endpoint} is {found[0].state.value}: "
                "nothing resent (it goes out anyway)"
            )
    click.echo(f"queued message {message_id} for {endpoint} again")


def _since(text: str, now: float) -> float:
    """``--since`` (``surefoot.outbox.parse_since``)."""
    from surefoot.outbox import SINCE, parse_since

    try:
        return parse_since(text, now)
    except ValueError:
        raise click.BadParameter(f"expected {SINCE}, got {text!r}", param_hint="--since") from None


@webhooks.command("recover")
@_DATABASE
@_PREFIX
@click.argument("name")
@click.option("--since", "since_text", required=True, metavar="WHEN",
              help="Unix seconds, an ISO 8601 time or a duration back (2h, 30m, 3d).")  # fmt: skip
def recover_endpoint(database: str | None, prefix: str, name: str, since_text: str) -> None:
    """Send endpoint NAME every message recorded since WHEN that it has not received,
    now: the failed ones again, those waiting for their next attempt, and those recorded
    while it was disabled."""
    since = _since(since_text, SystemClock().now())
    with _outbox(database, prefix) as outbox:
        count = outbox.recover(name, since)
    plural = "y" if count == 1 else "ies"
    click.echo(
        f"queued {count} deliver{plural} to {name} of messages recorded since {_utc(since)} "
        "(failed, waiting for their next attempt, or missed while it was disabled)"
    )


@webhooks.command("worker")
@_DATABASE
@_PREFIX
@click.option("--timeout", type=float, default=15.0, show_default=True,
              help="Seconds an attempt may take.")  # fmt: skip
@click.option("--max-in-flight", type=int, default=100, show_default=True,
              help="Requests in flight at most, over every endpoint.")  # fmt: skip
@click.option("--allow-private", is_flag=True,
              help="Let endpoints resolve to private and reserved addresses.")  # fmt: skip
@click.option("--allow-network", "networks", multiple=True, metavar="CIDR",
              help="A private network endpoints may resolve to (repeat it).")  # fmt: skip
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port.")  # fmt: skip
def run_worker(
    database: str | None,
    prefix: str,
    timeout: float,
    max_in_flight: int,
    allow_private: bool,
    networks: tuple[str, ...],
    metrics_port: int | None,
) -> None:
    """Deliver the outbox's messages until SIGINT or SIGTERM.

    On either signal it claims nothing more, waits for the requests in flight (each at
    most --timeout) and records them, then exits with status 0.
    """
    _need("webhooks worker", "client")
    if metrics_port is not None:
        _need("webhooks worker --metrics-port", "metrics")
    if allow_private and networks:
        raise click.UsageError("--allow-private allows every network: drop --allow-network")
    from surefoot.events import EventHook, LoggingHook
    from surefoot.outbox import OutboxWorker

    hooks: list[EventHook] = [LoggingHook()]
    metrics = None
    if metrics_port is not None:
        from surefoot.metrics import PrometheusMetrics

        metrics = PrometheusMetrics()
        hooks.append(metrics)
    hints = {
        "timeout": "--timeout",
        "max_in_flight": "--max-in-flight",
        "allow_private": "--allow-network",
    }
    with _outbox(database, prefix, hints=hints, names_endpoints=False) as outbox:
        outbox.stats()  # the tables exist and the database answers, before anything starts

        async def run() -> None:
            worker = OutboxWorker(
                outbox,
                timeout=timeout,
                max_in_flight=max_in_flight,
                allow_private=allow_private or list(networks),
                hooks=hooks,
            )
            server = None
            try:
                if metrics is not None and metrics_port is not None:
                    server = _serve_metrics(metrics_port, metrics.registry)
                # Only once every option was accepted: the library itself adds no handler.
                _log_to_stderr("surefoot", logging.INFO)
                loop = asyncio.get_running_loop()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, worker.stop)
                click.echo(
                    f"surefoot webhooks worker: delivering from {masked_url(outbox.database)} "
                    f"(tables {prefix}_*)"
                    + (f"; metrics on port {metrics_port}" if server is not None else ""),
                    err=True,
                )
                try:
                    await worker.run()
                finally:
                    for signum in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(signum)
            finally:
                await worker.aclose()
                if server is not None:
                    server.shutdown()
            click.echo("surefoot webhooks worker: stopped", err=True)

        # uvloop when it is there (uvicorn[standard] brings it): a cheaper loop per request.
        factory = None
        if importlib.util.find_spec("uvloop") is not None:
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run())


def _serve_metrics(port: int, registry: Any) -> Any:
    """prometheus_client's HTTP server of ``registry`` on ``port`` (to shut down after)."""
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, registry=registry)
    except OSError as exc:
        raise click.ClickException(
            f"--metrics-port: cannot listen: {exc.strerror or exc}"
        ) from None
    return server


def _log_to_stderr(name: str, level: int) -> None:
    """Log ``name``'s records at ``level`` and above on stderr (the library adds no handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(level)


# -- sagas (surefoot.saga) -------------------------------------------------------------------

_SAGA_DATABASE = click.option(
    "--database",
    envvar="SUREFOOT_SAGA_DATABASE",
    help="The sagas' database: sqlite:///path or postgresql://... (or $SUREFOOT_SAGA_DATABASE).",
)
_SAGA_PREFIX = click.option(
    "--prefix",
    default="surefoot_saga",
    show_default=True,
    help="The saga tables' name prefix.",
)
_SAGA_HINTS = {
    "state": "--state",
    "limit": "--limit",
    "reason": "--reason",
    "actor": "--actor",
    "SagaLog.database": "--database",
    "SagaLog.prefix": "--prefix",
}


@main.group()
def sagas() -> None:
    """List, inspect and settle sagas (``surefoot.saga``), and run a worker."""


@contextlib.contextmanager
def _saga_log(database: str | None, prefix: str, *, create: bool = False) -> Iterator[Any]:
    """The ``SagaLog`` at ``database``, closed after; every error it raises is one line:
    an invalid value a usage error naming its option (exit 2), an unknown saga, a refused
    action or an unavailable database an error (exit 1)."""
    from surefoot.errors import AdminNotFound, SagaActionRefused
    from surefoot.saga import SagaLog

    database = _database_given(
        database, "SUREFOOT_SAGA_DATABASE", "sagas'", "surefoot sagas init", create
    )
    try:
        log = SagaLog(database, prefix=prefix)
    except ConfigurationError as exc:
        raise _hinted(exc, _SAGA_HINTS) from None
    try:
        yield log
    except ValueError as exc:
        raise _hinted(ConfigurationError(str(exc)), _SAGA_HINTS) from None
    except AdminNotFound as exc:
        raise click.ClickException(f"no {exc.fields.get('what', 'such saga')}") from None
    except SagaActionRefused as exc:
        raise click.ClickException(exc.detail) from None
    except StoreUnavailable as exc:
        raise _unavailable(exc, database, "sagas'", "surefoot sagas init") from None
    finally:
        with contextlib.suppress(Exception):
            log.close()


def _duration(text: str, option: str) -> float:
    """A duration back from now (``10m``, ``2h``; ``surefoot.outbox.parse_since``) in seconds."""
    from surefoot.outbox import parse_since

    now = SystemClock().now()
    try:
        seconds = now - parse_since(text, now)
    except ValueError:
        seconds = -1.0
    if not text[:1].isdigit() or text.isdigit() or seconds < 0 or "-" in text or ":" in text:
        raise click.BadParameter(
            f"expected a duration (30s, 10m, 2h, 3d, 1w), got {text!r}", param_hint=option
        ) from None
    return seconds


def _age(seconds: float) -> str:
    """``seconds`` as a short age: ``42s``, ``17m``, ``5h``, ``3d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(int(seconds), 0)}s"


def _current_step(run: Any) -> str | None:
    """The step an open saga is at: the one running or being undone, else the one that
    failed, else the first pending one; None for a finished saga."""
    if run.state in ("completed", "compensated", "resolved"):
        return None
    for states in (("started", "unknown", "compensating"), ("failed",), ("pending",)):
        for step in reversed(run.steps) if states[0] != "pending" else run.steps:
            if step["state"] in states:
                return str(step["name"])
    return None


def _run_json(run: Any) -> dict[str, Any]:
    return {
        **run.as_dict(),
        **{k: _utc(getattr(run, k), precise=True) for k in ("created_at", "updated_at", "due_at")},
        "deadline_at": _utc(run.deadline_at, precise=True),
        "current_step": _current_step(run),
    }


_ACTOR_OPTION = click.option(
    "--actor",
    default=None,
    help="Who acts, recorded in the timeline (default: your user name).",
)
_SAGA_REASON = click.option(
    "--reason", required=True, help="Why, recorded in the timeline (printable ASCII)."
)


def _actor(actor: str | None) -> str:
    if actor is not None:
        return actor
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return "operator"


@sagas.command("init")
@_SAGA_DATABASE
@_SAGA_PREFIX
def init_sagas(database: str | None, prefix: str) -> None:
    """Create the sagas' tables (those that do not exist yet)."""
    with _saga_log(database, prefix, create=True) as log:
        log.create_tables()
    click.echo(
        f"the saga tables are ready in {masked_url(log.database)}: {prefix}_runs, {prefix}_log"
    )


@sagas.command("list")
@_SAGA_DATABASE
@_SAGA_PREFIX
@click.option("--state", help="Only sagas in this state (running, compensating, completed, "
              "compensated, needs_attention, resolved).")  # fmt: skip
@click.option("--name", help="Only sagas of this name.")
@click.option("--older-than", "older_than", metavar="DURATION",
              help="Only sagas unchanged for this long (30s, 10m, 2h, 3d).")  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@_AS_JSON
def list_sagas(
    database: str | None,
    prefix: str,
    state: str | None,
    name: str | None,
    older_than: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List sagas, the least recently changed first."""
    older = None if older_than is None else _duration(older_than, "--older-than")
    with _saga_log(database, prefix) as log:
        found = log.runs(state=state, name=name, older_than=older, limit=limit)
        now = log.clock.now()
    if as_json:
        click.echo(json.dumps([_run_json(run) for run in found], indent=2))
        return
    table = Table("id", "name", "state", "age", "current step", "error")
    for run in found:
        table.add_row(
            run.id,
            run.name,
            run.state,
            _age(now - run.created_at),
            _cell(_current_step(run)),
            _cell(run.error),
        )
    _console().print(table)


@sagas.command("show")
@_SAGA_DATABASE
@_SAGA_PREFIX
@click.argument("saga_id", metavar="ID")
@_AS_JSON
def show_saga(database: str | None, prefix: str, saga_id: str, as_json: bool) -> None:
    """Show saga ID: its steps and its timeline (each transition, and who made it)."""
    with _saga_log(database, prefix) as log:
        timeline = log.timeline(saga_id)
        run = log.get(saga_id)
    if run is None:  # deleted between the two reads
        raise click.ClickException(f"no saga {saga_id!r}")
    if as_json:
        entries = [{**e.as_dict(), "at": _utc(e.at, precise=True)} for e in timeline]
        click.echo(json.dumps({**_run_json(run), "timeline": entries}, indent=2))
        return
    console = _console()
    console.print(
        f"saga {run.id} ({run.name}): {run.state}"
        + (f", error: {run.error}" if run.error else "")
        + f"\ncreated {_utc(run.created_at)}, updated {_utc(run.updated_at)}"
        + (f", deadline {_utc(run.deadline_at)}" if run.deadline_at is not None else "")
        + (f", held by {run.owner}" if run.owner else ""),
        markup=False,
        highlight=False,
    )
    steps = Table("step", "state", "attempts", "undo attempts", "error")
    for step in run.steps:
        steps.add_row(
            step["name"],
            step["state"],
            str(step["attempts"]),
            str(step["undo_attempts"]) if step["undo"] else "-",
            _cell(step["error"]),
        )
    console.print(steps)
    table = Table("#", "at", "event", "step", "attempt", "detail", "by")
    for e in timeline:
        table.add_row(
            str(e.seq),
            _cell(_utc(e.at, precise=True)),
            e.kind,
            _cell(e.step),
            _cell(e.attempt),
            _cell(e.detail),
            e.actor,
        )
    console.print(table)


def _act(
    kind: str, database: str | None, prefix: str, saga_id: str, reason: str, actor: str | None
) -> None:
    who = _actor(actor)
    with _saga_log(database, prefix) as log:
        run = getattr(log, kind)(saga_id, reason=reason, actor=who)
    click.echo(f"saga {run.id} ({run.name}): {kind} recorded by {who}; it is now {run.state}")


def _saga_action(kind: str, doc: str) -> None:
    """``surefoot sagas KIND ID --reason R [--actor A]``: one of a person's actions."""

    @sagas.command(kind, help=doc)
    @_SAGA_DATABASE
    @_SAGA_PREFIX
    @click.argument("saga_id", metavar="ID")
    @_SAGA_REASON
    @_ACTOR_OPTION
    def command(
        database: str | None, prefix: str, saga_id: str, reason: str, actor: str | None
    ) -> None:
        _act(kind, database, prefix, saga_id, reason, actor)


_saga_action(
    "retry", "Go on with saga ID now, in its direction, with fresh attempts for the step at hand."
)
_saga_action("compensate", "Turn saga ID back now: a worker undoes what it did, in reverse order.")
_saga_action(
    "resolve", "Close saga ID by hand: you settled it outside (no worker touches it again)."
)


def _load_sagas(spec: str) -> list[Any]:
    """The sagas ``module:attribute`` names (a ``Saga`` or a list of them), imported from
    the current directory too, as ``uvicorn`` does."""
    from surefoot.saga import Saga

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"expected module:attribute, got {spec!r}", param_hint="--app")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a SyntaxError or whatever its code raises, in one line
        first = (str(exc).strip().splitlines() or [""])[0]
        if not isinstance(exc, ImportError) or not first:
            first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise click.BadParameter(
            f"cannot import {module_name!r}: {first}", param_hint="--app"
        ) from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise click.BadParameter(
                f"{module_name!r} has no attribute {attribute!r}", param_hint="--app"
            )
        value = getattr(value, part)
    found = [value] if isinstance(value, Saga) else value
    if (
        not isinstance(found, list | tuple)
        or not found
        or not all(isinstance(s, Saga) for s in found)
    ):
        raise click.BadParameter(
            f"expected {spec} to be a Saga or a list of Sagas, got {type(value).__name__}",
            param_hint="--app",
        )
    return list(found)


def _saga_worker(log: Any, found: list[Any], **options: Any) -> Any:
    """A ``SagaWorker`` of the ``--app`` sagas; a list it refuses (two sagas of one name) is
    a usage error naming ``--app``."""
    from surefoot.saga import SagaWorker

    try:
        return SagaWorker(log, found, **options)
    except ConfigurationError as exc:
        detail = str(exc).removeprefix("SagaWorker.sagas: ")
        raise click.BadParameter(detail, param_hint="--app") from None


@sagas.command("worker")
@_SAGA_DATABASE
@_SAGA_PREFIX
@click.option("--app", "app", required=True, metavar="MODULE:ATTRIBUTE",
              help="The application's sagas: a Saga or a list of Sagas.")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=16, show_default=True,
              help="Sagas run at once.")  # fmt: skip
@click.option("--lease", type=click.FloatRange(1.0, 86400.0), default=60.0, show_default=True,
              help="Seconds a claim lasts without renewal.")  # fmt: skip
@click.option("--poll-interval", type=click.FloatRange(0.001, 3600.0), default=1.0,
              show_default=True, help="Seconds between claims when nothing is due.")  # fmt: skip
def run_saga_worker(
    database: str | None,
    prefix: str,
    app: str,
    concurrency: int,
    lease: float,
    poll_interval: float,
) -> None:
    """Run the application's due sagas until SIGINT or SIGTERM.

    On either signal it claims nothing more, lets each saga in flight finish its current
    step and records it, then exits with status 0.
    """
    found = _load_sagas(app)
    with _saga_log(database, prefix) as log:
        log.runs(limit=1)  # the tables exist and the database answers, before anything starts

        async def run() -> None:
            worker = _saga_worker(
                log, found, concurrency=concurrency, lease=lease, poll_interval=poll_interval
            )
            _log_to_stderr("surefoot", logging.INFO)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, worker.stop)
            click.echo(
                f"surefoot sagas worker: running {', '.join(s.name for s in found)} from "
                f"{masked_url(log.database)} (tables {prefix}_*)",
                err=True,
            )
            try:
                await worker.run()
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
                await worker.aclose()
            click.echo("surefoot sagas worker: stopped", err=True)

        asyncio.run(run())


# -- reconcile: one sweep across the project (surefoot.gateway.Sweeper) ------------------------

#: ``surefoot reconcile``'s exit status when something needs a person.
NEEDS_PERSON = 3


@main.command("reconcile")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="The gateway's policy file: its unknown idempotency keys are settled by "
              "lookups, and its [sagas] and [webhooks.send] tables are swept.")  # fmt: skip
@click.option("--saga-database", envvar="SUREFOOT_SAGA_DATABASE",
              help="The sagas' database (default: the config's [sagas]; or "
              "$SUREFOOT_SAGA_DATABASE).")  # fmt: skip
@click.option("--saga-prefix", default=None, help="The saga tables' name prefix.")
@click.option("--outbox-database", help="The outbox's database (default: the config's "
              "[webhooks.send]).")  # fmt: skip
@click.option("--outbox-prefix", default=None, help="The outbox tables' name prefix.")
@click.option("--app", "app", metavar="MODULE:ATTRIBUTE",
              help="The application's sagas (a Saga or a list): due sagas whose lease ran "
              "out are driven before the report.")  # fmt: skip
@click.option("--stuck-after", default="15m", show_default=True, metavar="DURATION",
              help="A running or compensating saga unchanged this long is reported.")  # fmt: skip
@click.option("--once", "once", is_flag=True, help="One sweep (the default).")
@click.option("--interval", type=click.FloatRange(1, 86400), default=None, metavar="SECONDS",
              help="Sweep every SECONDS until SIGINT or SIGTERM.")  # fmt: skip
@_AS_JSON
def reconcile(
    config_path: str | None,
    saga_database: str | None,
    saga_prefix: str | None,
    outbox_database: str | None,
    outbox_prefix: str | None,
    app: str | None,
    stuck_after: str,
    once: bool,
    interval: float | None,
    as_json: bool,
) -> None:
    """Sweep what may need a person: idempotency keys in outcome unknown, sagas, webhooks.

    Exit status: 0 when nothing needs a person, 3 when something does (a finding, or a
    part that could not be swept), 1 when a database is unavailable or has no tables (the
    other parts are still swept and reported), 2 for a usage error. With --interval it
    sweeps until SIGINT or SIGTERM and exits 0.
    """
    if once and interval is not None:
        raise click.UsageError("expected --once or --interval, not both")
    stuck = _duration(stuck_after, "--stuck-after")
    _need("reconcile", "gateway")  # the sweeper is the gateway's, with or without --config
    config = None
    if config_path is not None:
        from surefoot.gateway import load_config

        try:
            config = load_config(config_path)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        if config.sagas is not None:
            saga_database = saga_database or config.sagas.database
            saga_prefix = saga_prefix or config.sagas.prefix
        if config.sender is not None:
            outbox_database = outbox_database or config.sender.database
            outbox_prefix = outbox_prefix or config.sender.prefix
    if app is not None and saga_database is None:
        raise click.UsageError("--app needs the sagas' database: --saga-database URL or --config")
    if config is None and saga_database is None and outbox_database is None:
        raise click.UsageError(
            "nothing to sweep: expected --config FILE, --saga-database URL or --outbox-database URL"
        )
    found = _load_sagas(app) if app is not None else None
    with contextlib.ExitStack() as stack:
        log = None
        if saga_database is not None:
            log = stack.enter_context(_saga_log(saga_database, saga_prefix or "surefoot_saga"))
        outbox = None
        if outbox_database is not None:
            outbox = stack.enter_context(
                _outbox(outbox_database, outbox_prefix or "surefoot_webhook", names_endpoints=False)
            )
        code = asyncio.run(_sweep(config, log, outbox, found, stuck, interval, as_json))
    sys.exit(code)


async def _sweep(
    config: Any,
    log: Any,
    outbox: Any,
    found: list[Any] | None,
    stuck_after: float,
    interval: float | None,
    as_json: bool,
) -> int:
    """Sweep once (or every ``interval``); the exit status."""
    from surefoot.gateway import Sweeper

    gateway = None
    worker = None
    try:
        resolver = store = None
        if config is not None:
            from surefoot.gateway import Gateway

            gateway = Gateway(config, hooks=[])
            resolver, store = gateway.stack.resolver, gateway.stack.idempotency_store
        if found is not None:
            worker = _saga_worker(log, found)
        try:
            sweeper = Sweeper(
                resolver=resolver,
                store=store,
                saga_log=log,
                saga_worker=worker,
                outbox=outbox,
                stuck_after=stuck_after,
            )
        except ConfigurationError as exc:
            raise _hinted(exc, {"Sweeper.stuck_after": "--stuck-after"}) from None
        if interval is None:
            report = await sweeper.sweep_once()
            _print_report(report, as_json)
            if report.unavailable:
                return 1
            return NEEDS_PERSON if report.needs_person else 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        while not stop.is_set():
            _print_report(await sweeper.sweep_once(), as_json)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        return 0
    finally:
        if worker is not None:
            await worker.aclose()
        if gateway is not None:
            await gateway.aclose()


def _print_report(report: Any, as_json: bool) -> None:
    """The report as JSON (one document per sweep) or as text for a person."""
    if as_json:
        click.echo(json.dumps({**report.as_dict(), "at": _utc(report.at, precise=True)}, indent=2))
        return
    console = _console()
    swept = ", ".join(report.parts) or "nothing"
    summary = f"sweep at {_utc(report.at)} ({swept})"
    if "keys" in report.parts:
        summary += f": {report.settled_keys} unknown key(s) settled by lookups"
    if "sagas" in report.parts:
        summary += f"; {report.driven_sagas} saga(s) driven"
    console.print(summary, markup=False, highlight=False)
    if report.saga_counts:
        counts: dict[str, int] = {}
        for _name, state, count, _oldest in report.saga_counts:
            counts[state] = counts.get(state, 0) + count
        console.print(
            "sagas: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            markup=False,
            highlight=False,
        )
    if report.findings:
        table = Table("needs a person", "subject", "saga", "age", "detail")
        for f in report.findings:
            table.add_row(
                f.kind,
                f.subject,
                _cell(f.name),
                _cell(None if f.age is None else _age(f.age)),
                f.detail,
            )
        console.print(table)
    for error in report.errors:
        console.print(f"could not sweep {error}", markup=False, highlight=False)
    if report.unavailable:
        verdict = "a database could not be used: the sweep is incomplete (exit status 1)"
    elif report.needs_person:
        verdict = "something needs a person (exit status 3)"
    else:
        verdict = "nothing needs a person"
    console.print(verdict, markup=False, highlight=False)


@main.command("migrate")
@_STORE
@click.option(
    "--schema",
    help="PostgreSQL schema to migrate (default: the URL's schema option, else public).",
)
@click.option("--dry-run", is_flag=True, help="Print the pending migrations; change nothing.")
def migrate_store(store_url: str, schema: str | None, dry_run: bool) -> None:
    """Create or upgrade a store's tables (run it at deploy time).

    A PostgreSQL store never changes its schema by itself: this applies the migrations it
    lacks, each once, even when several processes run it at the same time. The embedded
    SQLite store migrates itself whenever it opens a file.
    """
    parts = _store_parts(store_url)
    scheme = parts.scheme
    if scheme == "sqlite":
        if not dry_run:

            async def open_sqlite() -> None:
                await store_from_url(store_url).aclose()  # creates or upgrades the file

            try:
                asyncio.run(open_sqlite())
            except ConfigurationError as exc:
                raise click.BadParameter(str(exc), param_hint="--store") from None
        click.echo(
            "SQLite migrates itself when the store opens its file"
            + (": nothing to do" if dry_run else f": {parts.path[1:]} is up to date")
        )
        return
    if scheme not in ("postgresql", "postgres"):
        click.echo(f"{scheme}:// stores keep no schema: nothing to migrate")
        return
    try:
        from surefoot.storage.postgres import migrate
    except ImportError as exc:  # pragma: no cover - the extra is part of the test setup
        raise click.ClickException(
            f"PostgreSQL needs its driver: pip install 'surefoot[postgres]' ({exc})"
        ) from None
    try:
        options = dict(parse_qsl(split_url(store_url).query))
        target = schema or options.get("schema") or "public"
        applied = asyncio.run(migrate(store_url, schema=target, dry_run=dry_run))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except StoreUnavailable as exc:
        cause = masked_text(str(exc.__cause__), store_url)
        raise click.ClickException(f"cannot migrate: {cause}") from None
    verb = "would apply" if dry_run else "applied"
    for name in applied:
        click.echo(f"{verb} {name} to schema {target!r}")
    if not applied:
        click.echo(f"schema {target!r} is up to date")


def _store_key(store_key: str) -> None:
    try:
        operator_store_key(store_key)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="STORE_KEY") from None


def _gateway(command: str) -> Any:
    _need(command, "gateway")
    import surefoot.gateway as gateway

    return gateway


@main.command("serve")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The policy file (TOML).",
)  # fmt: skip
@click.option("--host", help="Address to listen on (default: [server] host).")
@click.option(
    "--port", type=click.IntRange(0, 65535),
    help="Port to listen on (default: [server] port; 0: any).",
)  # fmt: skip
@click.option(
    "--admin-port", type=click.IntRange(0, 65535), help="Admin API port (default: [admin] port)."
)
@click.option("--workers", type=click.IntRange(1, 64), help="Worker processes.")
def serve_gateway(
    config_path: str,
    host: str | None,
    port: int | None,
    admin_port: int | None,
    workers: int | None,
) -> None:
    """Run the gateway in front of the upstream the policy file names.

    SIGHUP (or POST /admin/reload) reloads the file without dropping requests;
    SIGINT or SIGTERM stops after the requests in flight.
    """
    gateway = _gateway("serve")
    try:
        gateway.serve(
            config_path,
            host=host,
            port=port,
            admin_port=admin_port,
            workers=workers,
            ready=lambda line: click.echo(line, err=True),
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from None


@main.command("decide")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The gateway's policy file (TOML).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8090, show_default=True,
    help="Port to listen on (0: any).",
)  # fmt: skip
@click.option(
    "--uds", type=click.Path(dir_okay=False),
    help="Listen on this Unix socket instead of --host and --port; whoever may open it is "
    "trusted as the edge (docs/edge.md).",
)  # fmt: skip
@click.option(
    "--workers", type=click.IntRange(1, 64), help="Worker processes (default: [server] workers)."
)
def decide(config_path: str, host: str, port: int, uds: str | None, workers: int | None) -> None:
    """Run the decision service NGINX, HAProxy and Envoy ask (docs/edge.md).

    The same rate-limit policies, identity rules and store as `surefoot serve`, without
    the upstream: GET /decide answers 200 (allowed) or the problem (429...).
    SIGHUP reloads the file; SIGINT or SIGTERM stops after the requests in flight.
    """
    _need("decide", "gateway")
    from surefoot.edge import decide as serve_decisions

    try:
        serve_decisions(
            config_path,
            host=host,
            port=port,
            uds=uds,
            workers=workers,
            ready=lambda line: click.echo(line, err=True),
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The gateway's policy file (TOML).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8081, show_default=True,
    help="Port to listen on (0: any).",
)  # fmt: skip
def envoy(config_path: str, host: str, port: int) -> None:
    """Run Envoy's rate-limit service (gRPC ShouldRateLimit) with the policy file's limits.

    The same policies, identity rules and store as `surefoot serve` and `surefoot decide`:
    a client limited through all three is counted once (docs/edge.md#envoy).
    SIGINT or SIGTERM stops it.
    """
    _need("envoy", "edge")
    from surefoot.edge import serve_envoy
    from surefoot.gateway import load_config

    try:
        config = load_config(config_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> None:
        try:
            served = await serve_envoy(config, host=host, port=port)
        except RuntimeError as exc:  # grpc could not bind the address
            raise click.ClickException(f"--port: cannot listen on {host}:{port}: {exc}") from None
        click.echo(f"Envoy rate-limit service on {host}:{served.port}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await served.stop(5)

    asyncio.run(run())


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a gateway policy file, and what serving it needs, without serving.

    Exit status 1 if the file is invalid or the start would fail (an upstream app that
    cannot be imported, a store URL its driver refuses); a network store that does not
    answer within 2 seconds is a warning.
    """
    gateway = _gateway("check-config")
    try:
        config = gateway.load_config(config_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    found = asyncio.run(gateway.check_start(config))
    for warning in (*found.warnings, *config.store_warnings()):
        click.echo(f"{config_path}: warning: {warning}", err=True)
    if found.errors:
        raise click.ClickException("\n".join(f"{config_path}: {error}" for error in found.errors))
    root = config.root
    click.echo(
        f"{config_path}: OK: upstream {config.upstream_label}, {len(root.routes)} routes, "
        f"{len(config.rate_limit_policies)} rate-limit policies, {len(root.clients)} clients, "
        f"{len(config.lookups)} lookups, {len(config.webhooks)} webhook endpoints"
    )


@main.command("alerts")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The policy file (TOML); its [alerts] table sets the thresholds.",
)  # fmt: skip
@click.option(
    "--prometheus", "prometheus", is_flag=True, required=True,
    help="Write a Prometheus rules file (the only format so far).",
)  # fmt: skip
@click.option(
    "--output", "-o", "output", type=click.Path(dir_okay=False),
    help="Write the rules to this file (default: standard output).",
)  # fmt: skip
def alerts(config_path: str, prometheus: bool, output: str | None) -> None:
    """Alerting rules built from a gateway policy file: refusal spikes per rate-limit
    policy, duplicate and reused keys, unknown outcomes, open breakers, failing stores,
    shedding, and sagas and webhooks when configured (docs/observability.md).

    Check the file with `promtool check rules FILE`; Prometheus loads it from
    `rule_files`.
    """
    gateway = _gateway("alerts")
    if not prometheus:
        raise click.UsageError("choose a format: --prometheus")
    try:
        config = gateway.load_config(config_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    text = gateway.rules_yaml(config)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    count = len(gateway.alert_rules(config))
    click.echo(f"{output}: {count} alerting rules from {config_path}", err=True)


@main.command("docs")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The policy file (TOML).",
)  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "html"]), default="markdown",
    show_default=True, help="Markdown, or one self-contained HTML page.",
)  # fmt: skip
@click.option(
    "--output", "-o", "output", type=click.Path(dir_okay=False),
    help="Write the page to this file (default: standard output).",
)  # fmt: skip
@click.option("--title", help="The page's title.")
@click.option(
    "--now", "now_text", metavar="WHEN",
    help="A date and time such as 2027-01-01T00:00:00Z: states each deprecation as of then "
    "(default: no state and no date, so the page depends on the file alone).",
)  # fmt: skip
@click.option(
    "--client", "client", metavar="NAME",
    help="A [[clients]] name: that client's own page, with its own limits, sunset, version "
    "and rollout state (default: the page every consumer reads, which names no client).",
)  # fmt: skip
def consumer_docs(
    config_path: str,
    fmt: str,
    output: str | None,
    title: str | None,
    now_text: str | None,
    client: str | None,
) -> None:
    """A page for the API's consumers, from a gateway policy file: each route's
    idempotency key, rate limits per tier and their headers, deprecation, and every error it
    can answer with, with what to do next and whether a retry is safe (docs/cli.md#docs)."""
    gateway = _gateway("docs")
    now = None
    if now_text is not None:
        try:
            moment = datetime.datetime.fromisoformat(now_text)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise click.BadParameter(
                "expected a date and time with its offset, such as 2027-01-01T00:00:00Z",
                param_hint="--now",
            )
        now = moment.timestamp()
    try:
        config = gateway.load_config(config_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    if client is not None and all(c.name != client for c in config.root.clients):
        raise click.UsageError(f"--client: no [[clients]] named {client!r}")
    text = gateway.consumer_docs(config, format=fmt, now=now, title=title, client=client)
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"{output}: the {fmt} page of {config_path}", err=True)


@main.group()
def silences() -> None:
    """Silences of the gateway's own alerts (docs/observability.md#silences): shared by
    every worker through the store of the policy file's [alerts] table."""


_ALERTS_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The gateway's policy file (TOML); its [alerts] store holds the silences.",
)


def _board_of(command: str, config_path: str, table: str, what: str) -> tuple[Any, Any, str]:
    """The gateway's package, the policy file at ``config_path``, and the name of its
    ``[table]``'s store, which the gateway's workers share (``what`` live there); a
    ``memory://`` store, held in the gateway's process only, is refused."""
    gateway = _gateway(command)
    try:
        config = gateway.load_config(config_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    name: str = getattr(config.root, table).store
    if config.store_url(name).startswith("memory:"):
        raise click.BadParameter(
            f"stores.{name} is a memory:// store, whose {what} live in the gateway's "
            "process only: use the admin API, or a sqlite, redis or postgresql store",
            param_hint="--config",
        )
    return gateway, config, name


def _silences(command: str, config_path: str, work: Any) -> Any:
    """``work(silences, now)`` on the silences of ``config_path``'s [alerts] store."""
    gateway, config, name = _board_of(f"silences {command}", config_path, "alerts", "silences")
    return _run(
        config.store_url(name),
        lambda store, now: work(gateway.Silences(store), now),
        hint="--config",
        where=f"stores.{name}: ",
    )


@silences.command("list")
@_ALERTS_CONFIG
@_AS_JSON
def list_silences(config_path: str, as_json: bool) -> None:
    """Every silence: active, pending, and expired in the last day."""

    async def work(board: Any, now: float) -> list[tuple[Any, float]]:
        return [(silence, now) for silence in await board.read(now)]

    found = _silences("list", config_path, work)
    if as_json:
        listed = [{**s.as_dict(), "active": s.active(now)} for s, now in found]
        click.echo(json.dumps(listed, indent=2))
        return
    if not found:
        click.echo("no silences")
        return
    table = Table("id", "state", "matchers", "until", "by", "comment")
    for silence, now in found:
        state = (
            "active" if silence.active(now) else "pending" if silence.starts_at > now else "expired"
        )
        matchers = " ".join(f"{m.name}{m.op}{m.value}" for m in silence.matchers)
        table.add_row(
            silence.id,
            state,
            _cell(matchers),
            _utc(silence.ends_at),
            _cell(silence.created_by),
            _cell(silence.comment),
        )
    _console().print(table)


@silences.command("add")
@_ALERTS_CONFIG
@click.option(
    "--match", "matches", multiple=True, required=True,
    help="name=value, name!=value, name=~regex or name!~regex (repeatable; all must match).",
)  # fmt: skip
@click.option("--for", "duration", required=True, help="How long: 30m, 2h, 3d...")
@click.option("--comment", required=True, help="Why (shown with the silence).")
@click.option("--by", "created_by", default=lambda: os.environ.get("USER", "cli"), help="Who.")
def add_silence(
    config_path: str, matches: tuple[str, ...], duration: str, comment: str, created_by: str
) -> None:
    """Silence the alerts every --match matches, from now for --for."""
    gateway = _gateway("silences add")
    seconds = _duration(duration, "--for")
    try:
        matchers = [gateway.parse_matcher(text) for text in matches]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--match") from None

    async def work(board: Any, now: float) -> Any:
        return await board.add(
            matchers, now=now, ends_at=now + seconds, comment=comment, created_by=created_by
        )

    try:
        silence = _silences("add", config_path, work)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{silence.id}: silenced until {_utc(silence.ends_at)}")


@silences.command("expire")
@_ALERTS_CONFIG
@click.argument("silence_id")
def expire_silence(config_path: str, silence_id: str) -> None:
    """End a silence now."""

    async def work(board: Any, now: float) -> Any:
        return await board.expire(silence_id, now)

    if _silences("expire", config_path, work) is None:
        raise click.ClickException(f"no silence {silence_id!r}")
    click.echo(f"{silence_id}: expired")


@main.group()
def bans() -> None:
    """Bans, allows, temporary limits and challenges (docs/abuse.md): shared by every
    worker and host through the store of the policy file's [abuse] table."""


_ABUSE_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The gateway's policy file (TOML); its [abuse] store holds the entries.",
)
_ACTION = click.option(
    "--action",
    type=click.Choice(["ban", "allow", "limit", "challenge"]),
    default="ban",
    show_default=True,
    help="What the entry does.",
)


def _subject_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--address", help="An IP address."),
            click.option("--network", help="A network (CIDR), e.g. 198.51.100.0/24."),
            click.option("--principal", help="A [[clients]] name, or cred:/user:/addr:..."),
            click.option(
                "--key-env", help="An environment variable holding an API key (hashed at once)."
            ),
            click.option("--account", help="An account name, as a login form sends it."),
        ]
    ):
        command = option(command)
    return command


def _subject(
    address: str | None,
    network: str | None,
    principal: str | None,
    key_env: str | None,
    account: str | None,
) -> dict[str, str]:
    fields = {
        name: value
        for name, value in (
            ("address", address),
            ("network", network),
            ("principal", principal),
            ("account", account),
        )
        if value is not None
    }
    if key_env is not None:
        key = os.environ.get(key_env)
        if not key:
            raise click.BadParameter(
                f"the environment variable {key_env!r} is not set", param_hint="--key-env"
            )
        fields["key"] = key
    return fields


def _bans(command: str, config_path: str, work: Any) -> Any:
    """``work(control, now)`` on the entries of ``config_path``'s [abuse] store, read first."""
    gateway, config, name = _board_of(f"bans {command}", config_path, "abuse", "entries")
    from surefoot.abuse import AbuseLog, SharedBans

    log = config.root.abuse.log
    hooks = [AbuseLog(log)] if log else []

    async def run(store: Any, now: float) -> Any:
        shared = SharedBans(store)
        shared.configure(config.abuse.entries)
        await shared.sync()
        return await work(gateway.AbuseControl(shared, config, hooks), now)

    try:
        return _run(config.store_url(name), run, hint="--config", where=f"stores.{name}: ")
    finally:
        for hook in hooks:
            hook.close()


@bans.command("list")
@_ABUSE_CONFIG
@click.option("--action", type=click.Choice(["ban", "allow", "limit", "challenge"]))
@click.option("--kind", type=click.Choice(["address", "network", "principal", "account"]))
@_AS_JSON
def list_bans(config_path: str, action: str | None, kind: str | None, as_json: bool) -> None:
    """The entries in force, the policy file's included."""
    from surefoot.abuse import Action, Kind

    async def work(control: Any, now: float) -> list[dict[str, Any]]:
        return control.listing(  # type: ignore[no-any-return]
            now, action=Action(action) if action else None, kind=Kind(kind) if kind else None
        )

    found = _bans("list", config_path, work)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no entries")
        return
    table = Table("action", "kind", "value", "until", "source", "reason")
    for entry in found:
        until = "never" if entry["until"] is None else _utc(entry["until"])
        table.add_row(
            entry["action"],
            entry["kind"],
            _cell(entry["value"]),
            until,
            _cell(entry["source"]),
            _cell(entry["reason"]),
        )
    _console().print(table)


@bans.command("add")
@_ABUSE_CONFIG
@_ACTION
@_subject_options
@click.option("--for", "duration", help="How long: 30m, 2h, 7d (default: no expiry).")
@click.option("--reason", default="", help="Why (in the abuse log and the listing).")
@click.option("--rate", type=float, help="A limit's requests per second.")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who.")
def add_ban(
    config_path: str,
    action: str,
    address: str | None,
    network: str | None,
    principal: str | None,
    key_env: str | None,
    account: str | None,
    duration: str | None,
    reason: str,
    rate: float | None,
    by: str,
) -> None:
    """Put an entry in force on every worker (within [abuse] sync_every)."""
    fields: dict[str, Any] = {
        "action": action,
        **_subject(address, network, principal, key_env, account),
        "reason": reason,
    }
    if duration is not None:
        fields["duration"] = duration
    if rate is not None:
        fields["rate"] = rate

    async def work(control: Any, now: float) -> Any:
        return await control.add(fields, now, by=by)

    try:
        added = _bans("add", config_path, work)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except SurefootError as exc:  # AbuseEntriesFull
        raise click.ClickException(exc.detail) from None
    for entry in added:
        until = "never" if math.isinf(entry.until) else _utc(entry.until)
        click.echo(f"{entry.action.value} {entry.kind.value} {entry.value}: until {until}")


@bans.command("remove")
@_ABUSE_CONFIG
@_ACTION
@_subject_options
@click.option("--reason", default="", help="Why (in the abuse log).")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who.")
def remove_ban(
    config_path: str,
    action: str,
    address: str | None,
    network: str | None,
    principal: str | None,
    key_env: str | None,
    account: str | None,
    reason: str,
    by: str,
) -> None:
    """Lift an entry on every worker (within [abuse] sync_every)."""
    fields = {
        "action": action,
        **_subject(address, network, principal, key_env, account),
        "reason": reason,
    }

    async def work(control: Any, now: float) -> Any:
        return await control.remove(fields, now, by=by)

    try:
        removed = _bans("remove", config_path, work)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not removed:
        raise click.ClickException("no such entry in force")
    for entry in removed:
        click.echo(f"{entry.action.value} {entry.kind.value} {entry.value}: removed")


@main.group()
def overrides() -> None:
    """Temporary rate-limit overrides (docs/gateway.md#temporary-overrides): shared by every
    worker and host through the store of the policy file's [rate_limit] table, each
    reverting by itself at its expiry."""


_RATE_LIMIT_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The gateway's policy file (TOML); its [rate_limit] store holds the overrides.",
)
_OVERRIDE_TARGET = [
    click.option("--policy", required=True, help="A [[rate_limit.policies]] name."),
    click.option("--client", help="A [[clients]] name (default: every client of the policy)."),
]


def _target_options(command: Any) -> Any:
    for option in reversed(_OVERRIDE_TARGET):
        command = option(command)
    return command


def _overrides(command: str, config_path: str, work: Any) -> Any:
    """``work(control)`` on the overrides of ``config_path``'s [rate_limit] store."""
    gateway, config, name = _board_of(
        f"overrides {command}", config_path, "rate_limit", "overrides"
    )

    async def run(store: Any, now: float) -> Any:
        return await work(gateway.OverrideControl(gateway.SharedOverrides(store), config))

    return _run(config.store_url(name), run, hint="--config", where=f"stores.{name}: ")


@overrides.command("list")
@_RATE_LIMIT_CONFIG
@click.option("--audit", is_flag=True, help="The audit trail (90 days) instead: who, what, why.")
@_AS_JSON
def list_overrides(config_path: str, audit: bool, as_json: bool) -> None:
    """The overrides in force, or with --audit every change of the last 90 days."""

    async def work(control: Any) -> list[dict[str, Any]]:
        return await (control.audit() if audit else control.listing())  # type: ignore[no-any-return]

    found = _overrides("list", config_path, work)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo("no changes" if audit else "no overrides in force")
        return
    if audit:
        table = Table("at", "change", "policy", "client", "limits", "by", "reason")
        for row in found:
            override = row["override"]
            table.add_row(
                _utc(row["at"]),
                row["change"],
                _cell(override["policy"]),
                _cell(override["client"] or "*"),
                _cell(", ".join(override["limits"])),
                _cell(row["by"]),
                _cell(row["reason"]),
            )
    else:
        table = Table("policy", "client", "limits", "until", "by", "reason")
        for row in found:
            table.add_row(
                _cell(row["policy"]),
                _cell(row["client"] or "*"),
                _cell(", ".join(row["limits"])),
                _utc(row["expires_at"]),
                _cell(row["by"]),
                _cell(row["reason"]),
            )
    _console().print(table)


@overrides.command("add")
@_RATE_LIMIT_CONFIG
@_target_options
@click.option(
    "--limit", "limits", multiple=True, required=True,
    help="A limit such as 1000/minute (repeatable; all apply).",
)  # fmt: skip
@click.option("--for", "duration", help="How long: 30m, 2h, 7d.")
@click.option("--until", type=float, help="Until when (unix seconds).")
@click.option("--reason", required=True, help="Why (in the audit trail).")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who.")
def add_override(
    config_path: str,
    policy: str,
    client: str | None,
    limits: tuple[str, ...],
    duration: str | None,
    until: float | None,
    reason: str,
    by: str,
) -> None:
    """Put an override in force on every worker (within a second) until it expires."""
    fields: dict[str, Any] = {"policy": policy, "limits": list(limits), "reason": reason, "by": by}
    if client is not None:
        fields["client"] = client
    if duration is not None:
        fields["for"] = duration
    if until is not None:
        fields["until"] = until

    async def work(control: Any) -> Any:
        return await control.add(fields)

    try:
        override, replaced = _overrides("add", config_path, work)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if replaced is not None:
        click.echo(f"{replaced.target}: replaced ({', '.join(replaced.limits)})")
    click.echo(f"{override.target}: {', '.join(override.limits)} until {_utc(override.expires_at)}")


@overrides.command("remove")
@_RATE_LIMIT_CONFIG
@_target_options
@click.option("--reason", required=True, help="Why (in the audit trail).")
@click.option("--by", default=lambda: os.environ.get("USER", "cli"), help="Who.")
def remove_override(
    config_path: str, policy: str, client: str | None, reason: str, by: str
) -> None:
    """End an override now, on every worker (within a second)."""
    fields = {"policy": policy, "client": client, "reason": reason, "by": by}

    async def work(control: Any) -> Any:
        return await control.remove(fields)

    try:
        removed = _overrides("remove", config_path, work)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if removed is None:
        raise click.ClickException(f"no override of {policy} {client or '*'} in force")
    click.echo(f"{removed.target}: removed")


@main.command("chaos")
@click.option("--listen", default="127.0.0.1:8474", show_default=True, help="HOST:PORT to serve.")
@click.option("--upstream", help="The server to put faults in front of (a base URL).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="A [chaos] TOML file.")
@click.option("--seed", type=int, help="The fault plan's seed (overrides the file's).")
def chaos(listen: str, upstream: str | None, plan_path: str | None, seed: int | None) -> None:
    """A fault-injecting HTTP proxy.

    With no plan it forwards everything untouched until rules arrive through its control
    API (PUT /__chaos/plan).
    """
    if upstream is None:
        raise click.UsageError("--upstream is required to run the proxy")
    host, port = _host_port(listen)
    _check_upstream(upstream)
    _need("chaos", "client")
    from surefoot.chaos import ChaosProxy, FaultPlan

    try:
        plan = FaultPlan.from_toml(plan_path) if plan_path else FaultPlan(seed=seed)
        if plan_path and seed is not None:
            plan = FaultPlan(plan.rules, seed=seed, paused=plan.paused)
        proxy = ChaosProxy(upstream=upstream, plan=plan, host=host, port=port)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    _log_faults()

    async def run() -> None:
        await proxy.start()
        rules = len(plan.rules)
        click.echo(
            f"surefoot chaos: {proxy.url} -> {masked_url(upstream)}; "
            f"{rules} rule{'s' * (rules != 1)}, "
            f"seed {plan.seed}; control API {proxy.url}/__chaos",
            err=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await proxy.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


class _ConfigProblem(click.ClickException):
    """An invalid input file: exit status 2, like a usage error, without the usage text."""

    exit_code = 2


@main.command("probe")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The probe file (TOML): hosts, budget, targets and their checks.",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print what would be sent; send nothing.")
@click.option(
    "--accept-side-effects", is_flag=True,
    help="Run write checks on targets without an effect check.",
)  # fmt: skip
@click.option(
    "--markdown", "markdown_path", type=click.Path(dir_okay=False),
    help="Write the report as Markdown to this file.",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False),
    help="Write the report as JSON to this file.",
)  # fmt: skip
@click.option(
    "--policy", "policy_path", type=click.Path(dir_okay=False),
    help="Write the [integrations.NAME] table of surefoot.client the findings justify.",
)  # fmt: skip
@click.option(
    "--name", default="partner", show_default=True,
    help="The integration's name in the --policy file.",
)  # fmt: skip
def probe(
    config_path: str,
    dry_run: bool,
    accept_side_effects: bool,
    markdown_path: str | None,
    json_path: str | None,
    policy_path: str | None,
    name: str,
) -> None:
    """Check whether a partner's API honours idempotency keys and its own rate limits.

    Runs the checks of the file against the hosts it lists, within its request cap and
    deadline (docs/probe.md). Exit status 1 when a required check fails, 3 when none
    failed but a required check did not pass (inconclusive or skipped), 2 when the file is
    invalid or an output file cannot be written.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise click.BadParameter(
            f"expected letters, digits, '_' and '-', got {name!r}", param_hint="--name"
        )
    _need("probe", "probe")
    from rich.progress import Progress

    from surefoot.probe import (
        describe,
        integration_toml,
        load_plan,
        run_probe,
        to_json,
        to_markdown,
        to_table,
    )

    try:
        plan = load_plan(config_path, accept_side_effects=accept_side_effects)
    except ConfigurationError as exc:
        raise _ConfigProblem(str(exc)) from None
    if dry_run:
        click.echo(describe(plan))
        return
    outputs = {"--markdown": markdown_path, "--json": json_path, "--policy": policy_path}
    for option, path in outputs.items():
        if path is not None:
            _check_writable(option, path)
    errors = Console(stderr=True)
    with Progress(console=errors, transient=True) as bar:
        task = bar.add_task("probing", total=plan.checks)

        def progress(finding: Any) -> None:
            bar.advance(task)
            line = f"{finding.target}: {finding.check}: {finding.verdict.value}"
            bar.console.print(line, markup=False)

        report = asyncio.run(
            run_probe(plan, accept_side_effects=accept_side_effects, progress=progress)
        )
    # The files first: a table the terminal cannot print must not lose them.
    writers = {"--markdown": to_markdown, "--json": to_json}
    for option, path in outputs.items():
        if path is None:
            continue
        writer = writers.get(option)
        text = writer(report) if writer is not None else integration_toml(report, name)
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise _ConfigProblem(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
    _console().print(to_table(report))
    click.echo(
        f"{report.requests_sent} requests in {report.duration:.1f} s; "
        + ", ".join(f"{n} {v}" for v, n in report.counts().items()),
        err=True,
    )
    if report.exit_status:
        click.echo(report.verdict_line(), err=True)
        sys.exit(report.exit_status)


def _check_writable(option: str, path: str) -> None:
    """Exit 2 before the run when ``path`` (the file of ``option``) cannot be written."""
    existed = os.path.lexists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise _ConfigProblem(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        os.remove(path)


def _host_port(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``:PORT`` for 127.0.0.1) as (host, port)."""
    host, colon, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {listen!r}", param_hint="--listen")
    return host or "127.0.0.1", int(port)


def _check_upstream(upstream: str) -> None:
    try:
        parts = urlsplit(upstream)
        _ = parts.port  # raises for a port that is not a number from 0 to 65535
        absolute = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a bad IPv6 literal or port
        absolute = False
    if not absolute:
        raise click.BadParameter(
            f"expected an absolute http:// or https:// URL, got {masked_url(upstream)!r}",
            param_hint="--upstream",
        )


def _log_faults() -> None:
    """Each injected fault on stderr, one line at WARNING, as docs/chaos.md says: the
    library itself adds no handler (``surefoot/__init__.py``), so the command does."""
    _log_to_stderr("surefoot.chaos", logging.WARNING)
