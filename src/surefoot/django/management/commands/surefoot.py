"""``manage.py surefoot keys list|resolve|forget|purge``: the ``surefoot keys`` CLI for the
idempotency store of ``settings.SUREFOOT`` (same arguments, output and exit codes).

The store is ``[idempotency] store`` of ``settings.SUREFOOT`` unless ``--store`` names
another URL. A store key is what ``list`` prints (``<principal>:<key>``, scoped).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from surefoot._masking import masked_text, split_url
from surefoot._operator import operator_response, operator_store_key
from surefoot.clock import SystemClock
from surefoot.errors import ConfigurationError, StoreUnavailable
from surefoot.idempotency import Record, State

__all__ = ["Command"]

_STATES = [s.value for s in State if s is not State.ABSENT]


class Command(BaseCommand):  # type: ignore[misc]
    help = "Inspect and settle idempotency records (for example outcome-unknown keys)."

    def add_arguments(self, parser: CommandParser) -> None:
        groups = parser.add_subparsers(dest="group", required=True, metavar="keys")
        keys = groups.add_parser("keys", help=self.help)
        commands = keys.add_subparsers(dest="command", required=True)
        listing = commands.add_parser("list", help="List live records, oldest first.")
        listing.add_argument("--state", choices=_STATES, help="Only records in this state.")
        listing.add_argument("--limit", type=_positive, default=100)
        listing.add_argument("--json", action="store_true", help="Print the records as JSON.")
        forget = commands.add_parser(
            "forget", help="Delete a record so that the next request with its key executes again."
        )
        forget.add_argument("store_key")
        resolve = commands.add_parser(
            "resolve",
            help="Settle an outcome-unknown (or abandoned) key with the response to replay.",
        )
        resolve.add_argument("store_key")
        resolve.add_argument("--status", type=int, required=True)
        resolve.add_argument("--body", default="", help="Body to replay (JSON text).")
        resolve.add_argument("--content-type", default="application/json")
        purge = commands.add_parser("purge", help="Delete expired records now.")
        purge.add_argument("--limit", type=_positive, default=10_000)
        for sub in (listing, forget, resolve, purge):
            sub.add_argument(
                "--store",
                help="Store URL (default: [idempotency] store of settings.SUREFOOT).",
            )

    def handle(self, *args: Any, **options: Any) -> None:
        url = options.get("store") or _settings_store()
        command = options["command"]
        if command in ("forget", "resolve"):
            try:
                operator_store_key(options["store_key"])
            except ValueError as exc:
                raise CommandError(f"STORE_KEY: {exc}") from None
        from surefoot.storage import sync_store_from_url

        try:
            parts = split_url(url)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        if parts.scheme == "sqlite" and not Path(parts.path[1:]).exists():
            # Opening would create an empty database and hide a typo in the path.
            raise CommandError(f"no database file at {parts.path[1:]!r}")
        try:
            store = sync_store_from_url(url)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        try:
            getattr(self, f"_{command}")(store, SystemClock().now(), options)
        except StoreUnavailable as exc:
            cause = masked_text(" ".join(str(exc.__cause__).split()), url)
            raise CommandError(f"the store is unavailable ({cause})") from None
        finally:
            store.close()

    def _list(self, store: Any, now: float, options: dict[str, Any]) -> None:
        state = State(options["state"]) if options["state"] else None
        rows: list[tuple[str, Record]] = store.records(now, state=state, limit=options["limit"])
        if options["json"]:
            self.stdout.write(json.dumps([_record_json(k, r) for k, r in rows], indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("store key", "state", "generation", "status", "expires in")
        for key, record in rows:
            table.add_row(
                key,
                record.state.value,
                str(record.generation),
                str(record.response.status) if record.response else "-",
                f"{max(0, record.expires_at - now):.0f}s",
            )
        tty = sys.stdout.isatty() and self.stdout._out is sys.stdout
        console = Console(file=self.stdout._out, width=None if tty else 200)
        console.print(table)

    def _forget(self, store: Any, now: float, options: dict[str, Any]) -> None:
        key = options["store_key"]
        if not store.forget(key, now):
            raise CommandError(f"no live record under {key}")
        self.stdout.write(f"forgot {key}")

    def _resolve(self, store: Any, now: float, options: dict[str, Any]) -> None:
        key, status = options["store_key"], options["status"]
        try:
            response = operator_response(status, options["body"].encode(), options["content_type"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not store.resolve(key, response, now):
            raise CommandError(
                f"{key} is not unknown or abandoned (absent, completed, or still in flight)"
            )
        self.stdout.write(f"resolved {key} with status {status}")

    def _purge(self, store: Any, now: float, options: dict[str, Any]) -> None:
        purged = store.purge(now, limit=options["limit"])
        self.stdout.write(f"purged {purged} expired records")


def _settings_store() -> str:
    from surefoot.django._settings import surefoot_settings

    try:
        return surefoot_settings().idempotency_store
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _record_json(key: str, record: Record) -> dict[str, Any]:
    return {
        "store_key": key,
        "state": record.state.value,
        "generation": record.generation,
        "status": record.response.status if record.response else None,
        "lease_expires_at": record.lease_expires_at,
        "expires_at": record.expires_at,
    }
