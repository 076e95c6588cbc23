#!/usr/bin/env bash
# The Django session shown in docs/django.md, run for real in a scratch directory:
#     bash examples/django_shop/session.sh > session.txt
# The shop runs under gunicorn with 4 sync workers sharing one SQLite store. Each command
# is printed after "$ ", then its output. Needs the project's venv (.venv/bin: gunicorn,
# python), curl, and a free port 8730.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SHOP="$ROOT/examples/django_shop"
export PATH="$ROOT/.venv/bin:$PATH" PYTHONPATH="$SHOP:$ROOT" COLUMNS=110
WORK=$(mktemp -d)
cd "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export SHOP_STORE="sqlite:///$WORK/surefoot.db" DJANGO_SETTINGS_MODULE=shop.settings

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
# Headers of interest, without the Date and Server lines that change on every run.
headers() {
    grep -v -i -e '^date:' -e '^server:' -e '^connection:' -e '^x-request-id:'
}

echo '$ gunicorn --workers 4 --bind 127.0.0.1:8730 shop.wsgi &'
gunicorn --workers 4 --bind 127.0.0.1:8730 shop.wsgi > gunicorn.log 2>&1 &
until curl -s -o /dev/null http://127.0.0.1:8730/v1/products; do
    sleep 0.1
done
echo

BODY='{"amount": 1200}'
echo "\$ curl -si -X POST -H 'Idempotency-Key: order-1001' -d '$BODY' http://127.0.0.1:8730/v1/charges"
curl -si -X POST -H 'Idempotency-Key: order-1001' -H 'Content-Type: application/json' \
    -d "$BODY" http://127.0.0.1:8730/v1/charges | headers
echo; echo
# The client's retry, maybe to another worker: the same charge, not a second one.
echo "\$ curl -si -X POST -H 'Idempotency-Key: order-1001' -d '$BODY' http://127.0.0.1:8730/v1/charges"
curl -si -X POST -H 'Idempotency-Key: order-1001' -H 'Content-Type: application/json' \
    -d "$BODY" http://127.0.0.1:8730/v1/charges | headers
echo; echo
# The same key for another charge, and a charge without a key: refused, as problem+json.
show curl -s -X POST -H 'Idempotency-Key: order-1001' -H 'Content-Type: application/json' \
    -d '{"amount": 9900}' http://127.0.0.1:8730/v1/charges
echo
show curl -s -X POST -H 'Content-Type: application/json' -d "$BODY" \
    http://127.0.0.1:8730/v1/charges
echo

# DRF keeps its throttle_classes: 5 listings a minute, counted across the 4 workers
# (the readiness probe above was the first).
for i in 2 3 4 5; do
    curl -s -o /dev/null http://127.0.0.1:8730/v1/products
done
echo '$ curl -si http://127.0.0.1:8730/v1/products   # the 6th this minute'
curl -si http://127.0.0.1:8730/v1/products | headers
echo; echo

# What the store holds, through Django's manage.py.
show python "$SHOP/manage.py" surefoot keys list
