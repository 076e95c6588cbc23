"""The ``surefoot`` command line (also ``python -m surefoot``).

Only commands that work are listed: ``serve`` runs the gateway, ``check-config``
validates its policy file, ``errors`` prints the problem catalogue, ``keys`` lets an
operator inspect and settle idempotency records in a store, and ``migrate`` creates or
upgrades a PostgreSQL store's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table

from surefoot._version import __version__
from surefoot.clock import SystemClock
from surefoot.errors import (
    ConfigurationError,
    StoreUnavailable,
    catalogue,
    catalogue_markdown,
    problem_type_uri,
)
from surefoot.idempotency._core import Record, State, StoredResponse
from surefoot.storage import IdempotencyStore, store_from_url

__all__ = ["main"]


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


def _run(store_url: str, work: Any) -> Any:
    parts = urlsplit(store_url)
    if parts.scheme == "sqlite" and not Path(parts.path[1:]).exists():
        # Opening would create an empty database and hide a typo in the path.
        raise click.BadParameter(f"no database file at {parts.path[1:]!r}", param_hint="--store")

    async def go() -> Any:
        try:
            store = store_from_url(store_url)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint="--store") from None
        try:
            opener = getattr(store, "open", None)
            if opener is not None:
                # A network store connects now, with time to spare, rather than spend the
                # first call's short timeout connecting.
                await opener()
            return await work(store, SystemClock().now())
        except StoreUnavailable as exc:
            raise click.ClickException(f"the store is unavailable ({exc.__cause__})") from None
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
@click.option("--limit", default=100, show_default=True)
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
    data = body.encode()
    response = StoredResponse(
        status,
        ((b"content-type", content_type.encode()), (b"content-length", str(len(data)).encode())),
        data,
    )

    async def work(store: IdempotencyStore, now: float) -> bool:
        return await store.resolve(store_key, response, now)

    if not _run(store_url, work):
        raise click.ClickException(
            f"{store_key} is not unknown or abandoned (absent, completed, or still in flight)"
        )
    click.echo(f"resolved {store_key} with status {status}")


@keys.command("purge")
@_STORE
@click.option("--limit", default=10_000, show_default=True)
def purge_keys(store_url: str, limit: int) -> None:
    """Delete expired records now (stores also do this by themselves, in small batches)."""

    async def work(store: IdempotencyStore, now: float) -> int:
        return await store.purge(now, limit=limit)

    click.echo(f"purged {_run(store_url, work)} expired records")


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
    scheme = urlsplit(store_url).scheme
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
            + (": nothing to do" if dry_run else f": {urlsplit(store_url).path[1:]} is up to date")
        )
        return
    if scheme not in ("postgresql", "postgres"):
        click.echo(f"{scheme}:// stores keep no schema: nothing to migrate")
        return
    try:
        from surefoot.storage.postgres import _scrub, _split_url, migrate
    except ImportError as exc:  # pragma: no cover - the extra is part of the test setup
        raise click.ClickException(
            f"PostgreSQL needs its driver: pip install 'surefoot[postgres]' ({exc})"
        ) from None
    try:
        dsn, options = _split_url(store_url)
        target = schema or options.get("schema") or "public"
        applied = asyncio.run(migrate(dsn, schema=target, dry_run=dry_run))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    except StoreUnavailable as exc:
        cause = _scrub(str(exc.__cause__), store_url)
        raise click.ClickException(f"cannot migrate: {cause}") from None
    verb = "would apply" if dry_run else "applied"
    for name in applied:
        click.echo(f"{verb} {name} to schema {target!r}")
    if not applied:
        click.echo(f"schema {target!r} is up to date")


def _gateway() -> Any:
    try:
        import surefoot.gateway as gateway
    except ImportError as exc:  # pragma: no cover - the extra is part of the test setup
        raise click.ClickException(
            f"the gateway needs its extra: pip install 'surefoot[gateway]' ({exc})"
        ) from None
    return gateway


@main.command("serve")
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False),
    help="The policy file (TOML).",
)  # fmt: skip
@click.option("--host", help="Address to listen on (default: [server] host).")
@click.option("--port", type=int, help="Port to listen on (default: [server] port; 0: any).")
@click.option("--admin-port", type=int, help="Admin API port (default: [admin] port).")
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
    gateway = _gateway()
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


@main.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a gateway policy file without serving (exit status 1 if invalid)."""
    gateway = _gateway()
    try:
        config = gateway.load_config(config_path)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    root = config.root
    upstream = root.upstream.url or f"app {root.upstream.app}"
    click.echo(
        f"{config_path}: OK: upstream {upstream}, {len(root.routes)} routes, "
        f"{len(config.rate_limit_policies)} rate-limit policies, {len(root.clients)} clients, "
        f"{len(config.lookups)} lookups"
    )


@main.group("chaos", invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:8474", show_default=True, help="HOST:PORT to serve.")
@click.option("--upstream", help="The server to put faults in front of (a base URL).")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="A [chaos] TOML file.")
@click.option("--seed", type=int, help="The fault plan's seed (overrides the file's).")
@click.pass_context
def chaos(
    ctx: click.Context,
    listen: str,
    upstream: str | None,
    plan_path: str | None,
    seed: int | None,
) -> None:
    """A fault-injecting HTTP proxy (or, with a subcommand, a drill).

    With no plan it forwards everything untouched until rules arrive through its control
    API (PUT /__chaos/plan).
    """
    if ctx.invoked_subcommand is not None:
        return
    if upstream is None:
        raise click.UsageError("--upstream is required to run the proxy")
    from surefoot.chaos import ChaosProxy, FaultPlan

    try:
        plan = FaultPlan.from_toml(plan_path) if plan_path else FaultPlan(seed=seed)
        if plan_path and seed is not None:
            plan = FaultPlan(plan.rules, seed=seed, paused=plan.paused)
        host, _, port = listen.rpartition(":")
        proxy = ChaosProxy(upstream=upstream, plan=plan, host=host or "127.0.0.1", port=int(port))
    except (ConfigurationError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    async def run() -> None:
        await proxy.start()
        rules = len(plan.rules)
        click.echo(
            f"surefoot chaos: {proxy.url} -> {upstream}; {rules} rule{'s' * (rules != 1)}, "
            f"seed {plan.seed}; control API {proxy.url}/__chaos",
            err=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await proxy.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@chaos.command("drill")
@click.argument("scenario_path", type=click.Path(dir_okay=False))
@click.option("--store", type=click.Choice(["sqlite", "redis"]), help="Override [drill] store.")
@click.option(
    "--idempotency/--no-idempotency", default=None,
    help="Protect POST /charges at the gateway (--no-idempotency: the comparison run).",
)  # fmt: skip
@click.option("--clients", type=click.IntRange(1, 1024), help="Override [drill] clients.")
@click.option("--payments", type=click.IntRange(1), help="Override [drill] payments (per client).")
@click.option("--workers", type=click.IntRange(1, 16), help="Override [drill] workers.")
@click.option("--seed", type=int, help="Override [drill] seed.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results.")
@click.option("--keep", is_flag=True, help="Keep the working directory (logs, ledger, store).")
def chaos_drill(
    scenario_path: str,
    store: str | None,
    idempotency: bool | None,
    clients: int | None,
    payments: int | None,
    workers: int | None,
    seed: int | None,
    json_path: str | None,
    keep: bool,
) -> None:
    """Run the exactly-once drill SCENARIO_PATH (examples/drills/*.toml).

    Starts the example payments API behind `surefoot serve`, with a chaos proxy on each side
    of the gateway, makes every client's payments through the faults, then audits the
    ledger. Exits 1 if a payment was duplicated, missing or told the wrong charge.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from surefoot.chaos.drill import DrillError, Scenario, drill_table, run_drill

    try:
        scenario = Scenario.from_toml(scenario_path).overridden(
            store=store,
            idempotency=idempotency,
            clients=clients,
            payments=payments,
            workers=workers,
            seed=seed,
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    console = _console()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{scenario.name}: payments", total=scenario.total)
        try:
            report = run_drill(
                scenario,
                progress=lambda done, total: progress.update(task, completed=done),
                log=lambda line: progress.console.print(f"[dim]{line}[/]", highlight=False),
                keep=keep,
            )
        except (ConfigurationError, DrillError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
    console.print(drill_table([report]))
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.ok:
        raise SystemExit(1)
