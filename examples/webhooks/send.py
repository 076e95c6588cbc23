"""``python -m examples.webhooks.send``: sign an event as its sender would and deliver it.

Examples::

    python -m examples.webhooks.send stripe evt_1 charge.succeeded
    python -m examples.webhooks.send github 6f1e...   # X-GitHub-Delivery
    python -m examples.webhooks.send partner msg_1 --customer cus_1 --version 3
    python -m examples.webhooks.send stripe evt_2 charge.succeeded --tamper
    python -m examples.webhooks.send stripe evt_3 charge.requested --path /charges \
        --data '{"amount": 1250, "currency": "eur", "customer": "cus_1"}'

The secrets come from the same variables the app reads; ``--tamper`` changes the body
after signing, as a proxy that re-serialises JSON would; ``--data`` adds fields to the
event's body and ``--path`` posts elsewhere than ``/webhooks/SENDER``. Prints the answer's status,
its replay header if any, and its body.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import httpx

from surefoot.webhooks import GitHub, StandardWebhooks, Stripe


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.webhooks.send")
    parser.add_argument("sender", choices=("stripe", "github", "partner"))
    parser.add_argument("event_id")
    parser.add_argument("type", nargs="?", default="customer.updated")
    parser.add_argument("--customer", default="cus_1")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--tamper", action="store_true", help="change the body after signing")
    parser.add_argument("--data", default="{}", help="JSON fields added to the event's body")
    parser.add_argument("--path", help="where to post (default: /webhooks/SENDER)")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    now = int(time.time())
    if args.sender == "stripe":
        event = {"id": args.event_id, "type": args.type, **json.loads(args.data)}
        body = json.dumps(event).encode()
        headers = Stripe(secrets=(os.environ["STRIPE_WEBHOOK_SECRET"],)).sign(body, timestamp=now)
    elif args.sender == "github":
        body = json.dumps(
            {"ref": "refs/heads/main", "commits": [], **json.loads(args.data)}
        ).encode()
        headers = GitHub(secrets=(os.environ["GITHUB_WEBHOOK_SECRET"],)).sign(body)
        headers["x-github-delivery"] = args.event_id
    else:
        data = {"id": args.customer, "version": args.version}
        body = json.dumps({"type": args.type, "data": data, **json.loads(args.data)}).encode()
        scheme = StandardWebhooks(secrets=(os.environ["PARTNER_WEBHOOK_SECRET"],))
        headers = scheme.sign(body, event_id=args.event_id, timestamp=now)
    if args.tamper:
        body = json.dumps(json.loads(body), indent=1).encode()
    headers["content-type"] = "application/json"
    path = args.path or f"/webhooks/{args.sender}"
    answer = httpx.post(f"{args.url}{path}", content=body, headers=headers)
    replayed = " (replayed)" if answer.headers.get("idempotent-replayed") else ""
    print(f"{answer.status_code}{replayed} {answer.text}")


if __name__ == "__main__":
    main()
