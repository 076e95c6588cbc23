"""``python -m examples.checkout.orders [N] [DATABASE]``: start N checkouts (default 5).

Each order is one ``checkout`` saga recorded in ``DATABASE`` (default
``sqlite:///checkout.db``; its tables are created if need be); a worker runs it. Order 3
has a card that is declined, order 4 an address shipping refuses. Starting an order that
exists changes nothing: its first run is shown.
"""

from __future__ import annotations

import sys
from typing import Any

from examples.checkout.checkout import checkout
from surefoot.saga import SagaLog


def order(n: int) -> dict[str, Any]:
    """The input of order ``n``."""
    return {
        "sku": f"sku-{n % 3}",
        "quantity": 1 + n % 2,
        "amount": 1000 + 100 * n,
        "card": "declined" if n % 5 == 3 else "tok_visa",
        "address": "1 Nowhere Lane" if n % 5 == 4 else f"{n} Main Street",
    }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    log = SagaLog(sys.argv[2] if len(sys.argv) > 2 else "sqlite:///checkout.db")
    log.create_tables()
    for n in range(1, count + 1):
        run, created = log.start(checkout, f"order-{n}", order(n))
        print(f"{run.id}: {'started' if created else 'exists, ' + run.state}")
    log.close()


if __name__ == "__main__":
    main()
