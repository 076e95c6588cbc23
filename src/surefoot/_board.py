"""The bounds of a shared board (``surefoot.metrics``' ``BoardStore``), checked by every store.

A board is a named set of slots, each a bytes value with an expiry (epoch seconds). The
stores sit below ``metrics`` in the layers, so the bounds they share live here, at the root.

Rule 1: board and slot names are 1 to ``MAX_NAME`` printable ASCII characters (space
        included): a name is part of a store key, never an unbounded one.
Rule 2: a value is ``bytes`` of at most ``MAX_VALUE`` bytes.
Rule 3: ``expires_at`` is a finite time after ``now``: a slot that expires never lives
        forever, and one already expired would be refused by every read.
Rule 4: a board holds at most ``MAX_SLOTS`` live slots: a put or a claim of a new slot
        (absent or expired) on a full board raises ``board_full``'s error; overwriting a
        live slot never does.

Each check raises ``ValueError`` naming what is wrong, before the store is asked anything.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "MAX_NAME",
    "MAX_SLOTS",
    "MAX_VALUE",
    "board_full",
    "check_board",
    "check_slot",
    "check_slot_name",
]

#: Characters of a board or slot name, at most.
MAX_NAME = 256
#: Bytes of a slot's value, at most.
MAX_VALUE = 1 << 20
#: Live slots of one board, at most.
MAX_SLOTS = 10_000

_NAME = re.compile(rf"[\x20-\x7e]{{1,{MAX_NAME}}}")


def check_board(board: object) -> None:
    """Rule 1 for a board name."""
    _check_name("board", board)


def check_slot_name(board: object, slot: object) -> None:
    """Rule 1 for a board name and a slot name."""
    _check_name("board", board)
    _check_name("slot", slot)


def check_slot(board: object, slot: object, value: object, expires_at: float, now: float) -> None:
    """Rules 1 to 3 for a slot about to be written."""
    check_slot_name(board, slot)
    if not isinstance(value, bytes):
        raise ValueError(
            f"board {board!r}: a slot's value must be bytes, got {type(value).__name__}"
        )
    if len(value) > MAX_VALUE:
        raise ValueError(
            f"board {board!r}, slot {slot!r}: a value holds at most {MAX_VALUE} bytes, "
            f"got {len(value)}"
        )
    if not (math.isfinite(expires_at) and expires_at > now):
        raise ValueError(
            f"board {board!r}, slot {slot!r}: expires_at must be a finite time after now "
            f"({now!r}), got {expires_at!r}"
        )


def board_full(board: str) -> ValueError:
    """Rule 4's error: ``board`` has ``MAX_SLOTS`` live slots and was asked for another."""
    return ValueError(
        f"board {board!r} is full: it holds {MAX_SLOTS} live slots, the most a board may; "
        "a new slot needs one to expire or be deleted first"
    )


def _check_name(kind: str, name: object) -> None:
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        shown = name[:40] + "..." if isinstance(name, str) and len(name) > 40 else name
        raise ValueError(
            f"a {kind} name must be 1 to {MAX_NAME} printable ASCII characters, got {shown!r}"
            + (f" ({len(name)} characters)" if isinstance(name, str) else "")
        )
