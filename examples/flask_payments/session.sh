#!/usr/bin/env bash
# The session shown in docs/flask.md, run for real in a scratch directory:
#     bash examples/flask_payments/session.sh > session.txt
# gunicorn with 4 sync workers serves examples/flask_payments/app.py on SQLite (the ledger and
# surefoot's store, each one file shared by the workers). Each command is printed after "$ ",
# then its output. Needs the project's venv (.venv/bin on PATH: gunicorn, python), curl, and
# a free port 8760.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$ROOT/.venv/bin:$PATH" PYTHONPATH="$ROOT"
WORK=$(mktemp -d)
cd "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# Prints the command (quoting the words that need it) after "$ ", then runs it.
show() {
    local plain='^[A-Za-z0-9_./:=@%+,-]+$' word
    printf '$'
    for word; do
        if [[ $word =~ $plain ]]; then printf ' %s' "$word"; else printf " '%s'" "$word"; fi
    done
    echo
    "$@" 2>&1
    echo
}
# Prints a pipeline after "$ ", then runs it.
run() {
    echo "\$ $1"
    bash -c "$1" 2>&1
    echo
}

export ACME_KEY=sk_acme_demo GLOBEX_KEY=sk_globex_demo
export PAYMENTS_LEDGER=payments.db SUREFOOT_STORE=sqlite:///surefoot.db
URL=http://127.0.0.1:8760
if curl -s -o /dev/null "$URL"; then
    echo "port 8760 is taken: stop what listens there first" >&2
    exit 1
fi

echo '$ gunicorn --workers 4 --worker-class sync --bind 127.0.0.1:8760 examples.flask_payments.app:app &'
gunicorn --workers 4 --worker-class sync --bind 127.0.0.1:8760 examples.flask_payments.app:app \
    > gunicorn.log 2>&1 &
until curl -s -o /dev/null "$URL/v1/charges"; do
    sleep 0.1
done
echo

# A charge, with its idempotency key: created, and acme's limit (20 a minute, its tier) in
# the headers.
show curl -si -X POST "$URL/v1/charges" -H "X-API-Key: $ACME_KEY" \
    -H 'Idempotency-Key: order-1001' -H 'Content-Type: application/json' -d '{"amount": 1250}'
# The client retries (a timeout on its side): the same answer, byte for byte, not a second charge.
show curl -si -X POST "$URL/v1/charges" -H "X-API-Key: $ACME_KEY" \
    -H 'Idempotency-Key: order-1001' -H 'Content-Type: application/json' -d '{"amount": 1250}'
# The same key for another amount is a client bug: 422, nothing executed.
run "curl -s -X POST $URL/v1/charges -H \"X-API-Key: \$ACME_KEY\" -H 'Idempotency-Key: order-1001' -H 'Content-Type: application/json' -d '{\"amount\": 9900}' | python -m json.tool"
# No key at all: 400.
run "curl -s -X POST $URL/v1/charges -H \"X-API-Key: \$ACME_KEY\" -H 'Content-Type: application/json' -d '{\"amount\": 500}' | python -m json.tool"

# Eight identical requests at once, spread over the four workers: one charge. The others
# are replays, or 409 while the first was still running (retry them and they replay).
run "seq 8 | xargs -P 8 -I{} curl -s -o /dev/null -w '%{http_code}\n' -X POST $URL/v1/charges -H \"X-API-Key: \$ACME_KEY\" -H 'Idempotency-Key: order-2002' -H 'Content-Type: application/json' -d '{\"amount\": 4000}' | sort | uniq -c"
run "curl -s $URL/v1/charges -H \"X-API-Key: \$ACME_KEY\" | python -m json.tool"

# globex may send 3 charge requests a minute, counted once for the four workers (every
# request counts, replays included): the fourth is refused, whichever worker answers.
for key in order-3001 order-3002 order-3003; do
    show curl -s -o /dev/null -w '%{http_code}\n' -X POST "$URL/v1/charges" -H "X-API-Key: $GLOBEX_KEY" \
        -H "Idempotency-Key: $key" -H 'Content-Type: application/json' -d '{"amount": 100}'
done
show curl -si -X POST "$URL/v1/charges" -H "X-API-Key: $GLOBEX_KEY" \
    -H 'Idempotency-Key: order-3004' -H 'Content-Type: application/json' -d '{"amount": 100}'

# Refunds have their own rules, by decorator: a refund of an unknown charge is a 404, kept
# for the key like any answer, and 2 refunds a minute per account.
show curl -s -X POST "$URL/v1/refunds" -H "X-API-Key: $ACME_KEY" \
    -H 'Idempotency-Key: refund-1' -H 'Content-Type: application/json' -d '{"charge": "ch_nope"}'
show curl -s -o /dev/null -w '%{http_code} replayed=%header{idempotent-replayed}\n' -X POST "$URL/v1/refunds" \
    -H "X-API-Key: $ACME_KEY" -H 'Idempotency-Key: refund-1' -H 'Content-Type: application/json' \
    -d '{"charge": "ch_nope"}'

# The export streams the ledger (one export at a time per client: a concurrency limit).
show curl -si "$URL/v1/charges/export" -H "X-API-Key: $ACME_KEY"
