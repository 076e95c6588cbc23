"""The outbox drill's sending side: the applications and the outbox workers, one process each.

``python -m tools.drill.outbox app --database D --client C ...`` is one application: it
runs ``--transactions`` transactions on its own SQLite file, each one charge row and its
``charge.created`` event (``Outbox.enqueue``, ``event_id`` the charge's id) in one
``BEGIN IMMEDIATE`` ... ``COMMIT``; a share ``--rollback`` of them ends in ``ROLLBACK``
after the enqueue instead. After each outcome it appends ``{"id", "outcome"}`` to its
journal (what the audit learns of rolled-back charges: they leave nothing in the
database). Started again after a crash, it carries on after the last transaction its
database or its journal knows, so the transaction a crash cut off after its COMMIT is
neither lost nor run twice. With ``--pause-after N`` it stops right after the COMMIT of
its first committed transaction from number N on, creates ``--paused`` and waits there
for the drill's SIGKILL (a crash right after a COMMIT, before the journal heard of it).

``python -m tools.drill.outbox worker --database D ...`` is one ``OutboxWorker`` process:
it creates ``--ready`` once it runs, and stops cleanly on SIGTERM (the drill SIGKILLs it).

Both use ``TABLE_PREFIX`` for the outbox's tables; ``setup`` creates them, the charges
table and the receiver's endpoint (the drill calls it before starting anything).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["EVENT_TYPE", "TABLE_PREFIX", "charge_id", "main", "rolls_back", "setup"]

#: The outbox's table prefix in the drill's application databases.
TABLE_PREFIX = "drill_outbox"
#: The one event type the applications send.
EVENT_TYPE = "charge.created"
#: The receiver's endpoint in the outbox.
ENDPOINT = "ledger"
_CHARGES = """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    client INTEGER NOT NULL,
    n INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    customer TEXT NOT NULL
)
"""


def charge_id(client: int, n: int) -> str:
    """The id of application ``client``'s transaction number ``n`` (its event's id too)."""
    return f"chg-{client}-{n}"


def rolls_back(seed: int, client: int, n: int, share: float) -> bool:
    """Whether that transaction rolls back: the same answer in every run of the seed, and
    after a restart (one draw per transaction, not a generator's position)."""
    return random.Random(f"{seed}:{client}:{n}").random() < share


def _outbox(database: str, **options: Any) -> Any:
    from surefoot.outbox import Outbox

    return Outbox(f"sqlite:///{database}", prefix=TABLE_PREFIX, event_types=[EVENT_TYPE], **options)


def setup(
    database: str,
    *,
    url: str,
    secret: str,
    rate_limit: str | None = None,
    concurrency: int = 10,
) -> None:
    """Create ``database``: the charges table, the outbox's tables and its one endpoint
    (``url``, signed with ``secret``)."""
    outbox = _outbox(database)
    try:
        outbox.create_tables()
        outbox.add_endpoint(
            ENDPOINT, url=url, secrets=[secret], rate_limit=rate_limit, concurrency=concurrency
        )
    finally:
        outbox.close()
    with sqlite3.connect(database, isolation_level=None) as db:
        db.execute(_CHARGES)
    db.close()


# -- the application -----------------------------------------------------------------------------


def _resume(db: sqlite3.Connection, journal: Path, client: int) -> int:
    """The number of the next transaction: one past the last the database or the journal
    knows (a crash between a COMMIT and the journal's line leaves only the database's)."""
    (last,) = db.execute("SELECT max(n) FROM charges WHERE client = ?", (client,)).fetchone()
    numbers = [-1 if last is None else last]
    if journal.exists():
        for line in journal.read_text().splitlines():
            if line.strip():
                numbers.append(int(json.loads(line)["id"].rsplit("-", 1)[1]))
    return max(numbers) + 1


def run_application(args: argparse.Namespace) -> None:
    outbox = _outbox(args.database)
    journal = Path(args.journal)
    db = sqlite3.connect(args.database, isolation_level=None, timeout=30.0)
    out = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    start = _resume(db, journal, args.client)
    for n in range(start, args.transactions):
        charge = charge_id(args.client, n)
        amount, customer = 100 + n % 900, f"cus_{args.client}"
        undo = rolls_back(args.seed, args.client, n, args.rollback)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO charges (id, client, n, amount, customer) VALUES (?, ?, ?, ?, ?)",
                (charge, args.client, n, amount, customer),
            )
            data = {"amount": amount, "currency": "eur", "customer": customer, "reference": charge}
            outbox.enqueue(db, EVENT_TYPE, data, event_id=charge)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("ROLLBACK" if undo else "COMMIT")
        if not undo and args.pause_after is not None and n >= args.pause_after:
            Path(args.paused).touch()
            while True:  # the drill's SIGKILL ends this process here
                signal.pause()
        line = {"id": charge, "outcome": "rollback" if undo else "commit"}
        os.write(out, (json.dumps(line) + "\n").encode())
        if args.pace:
            time.sleep(args.pace)
    os.close(out)
    db.close()


# -- a worker ----------------------------------------------------------------------------------


async def _work(args: argparse.Namespace) -> None:
    from surefoot.outbox import OutboxWorker, RetrySchedule

    schedule = RetrySchedule(tuple(json.loads(args.schedule)), jitter=args.jitter)
    outbox = _outbox(args.database, schedule=schedule)
    worker = OutboxWorker(
        outbox,
        timeout=args.timeout,
        lease=args.lease,
        poll_interval=0.05,
        allow_private=True,
        breaker=args.breaker,
        rng=random.Random(args.seed).random,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    await asyncio.to_thread(Path(args.ready).touch)
    try:
        await worker.run()
    finally:
        await worker.aclose()
        outbox.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.drill.outbox")
    commands = parser.add_subparsers(dest="command", required=True)
    app = commands.add_parser("app", help="one application committing charges")
    app.add_argument("--database", required=True)
    app.add_argument("--client", type=int, required=True)
    app.add_argument("--transactions", type=int, required=True)
    app.add_argument("--journal", required=True)
    app.add_argument("--rollback", type=float, default=0.0)
    app.add_argument("--seed", type=int, default=0)
    app.add_argument("--pace", type=float, default=0.0)
    app.add_argument("--pause-after", type=int)
    app.add_argument("--paused", default=os.devnull)
    worker = commands.add_parser("worker", help="one outbox worker")
    worker.add_argument("--database", required=True)
    worker.add_argument("--ready", required=True)
    worker.add_argument("--lease", type=float, default=2.0)
    worker.add_argument("--timeout", type=float, default=1.5)
    worker.add_argument("--schedule", default="[0, 0.2, 0.5, 1, 2, 2, 2]")
    worker.add_argument("--jitter", type=float, default=0.1)
    worker.add_argument("--seed", type=int, default=0)
    worker.add_argument("--no-breaker", dest="breaker", action="store_false")
    args = parser.parse_args(argv)
    if args.command == "app":
        run_application(args)
    else:
        asyncio.run(_work(args))


if __name__ == "__main__":
    main()
