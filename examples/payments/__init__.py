"""A payments API that never charges a customer twice: FastAPI, a SQLite ledger, surefoot.

Run it with ``python -m examples.payments``; build it in tests with ``create_app``.
"""

from __future__ import annotations
