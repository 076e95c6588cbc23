"""examples/outbox: the application commits each change with its webhook, or neither."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

SHOP = Path(__file__).resolve().parents[2] / "examples" / "outbox" / "shop.py"


def test_a_change_and_its_webhook_commit_or_roll_back_together(tmp_path: Path) -> None:
    from surefoot.outbox import Outbox

    outbox = Outbox(f"sqlite:///{tmp_path / 'shop.db'}")
    outbox.create_tables()
    outbox.add_endpoint(
        "partner", url="https://partner.example/hooks", secrets=["whsec_" + "A" * 40]
    )
    outbox.close()

    def shop(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, str(SHOP), *args], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert shop("cus_1", "ada@example.com", "1").startswith("committed cus_1 v1 with msg_")
    assert shop("cus_1", "ada@lovelace.dev", "2", "--rollback").startswith("rolled back: msg_")
    with sqlite3.connect(tmp_path / "shop.db") as db:
        assert db.execute("SELECT email, version FROM customers").fetchall() == [
            ("ada@example.com", 1)
        ]
        rows = db.execute(
            "SELECT m.event_type, d.endpoint, d.state FROM surefoot_webhook_messages m "
            "JOIN surefoot_webhook_deliveries d ON d.seq = m.seq"
        ).fetchall()
    assert rows == [("customer.updated", "partner", "pending")]
