#!/usr/bin/env bash
# The checkout session shown in docs/sagas.md, run for real in a scratch directory:
#     bash examples/checkout/session.sh > session.txt
# Each command is printed after "$ ", then its output. Needs the project's venv
# (.venv/bin on PATH: surefoot, uvicorn, python) and a free port 8700.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$ROOT/.venv/bin:$PATH" PYTHONPATH="$ROOT" COLUMNS=110
WORK=$(mktemp -d)
cd "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

show() { echo "\$ $*"; "$@" 2>&1; echo; }

export SUREFOOT_SAGA_DATABASE=sqlite:///checkout.db
show surefoot sagas init

# The partners: payments charges order-2 but never answers (every attempt times out).
echo '$ CHECKOUT_FAULTS=timeout=1,only=order-2 uvicorn --factory examples.checkout.partners:from_env --port 8700 &'
CHECKOUT_FAULTS=timeout=1,only=order-2 uvicorn --factory examples.checkout.partners:from_env \
    --port 8700 --log-level warning &
until python -c "import httpx; httpx.get('http://127.0.0.1:8700/payments/charges')" 2>/dev/null; do
    sleep 0.1
done
echo

show python -m examples.checkout.orders 5

echo '$ surefoot sagas worker --app examples.checkout.checkout:checkout --poll-interval 0.2 &'
surefoot sagas worker --app examples.checkout.checkout:checkout --poll-interval 0.2 \
    > worker.log 2>&1 &
worker=$!
# Until no saga is running or compensating any more.
while surefoot sagas list --state running | grep -q order- ||
    surefoot sagas list --state compensating | grep -q order-; do
    sleep 0.5
done
kill -TERM "$worker"
wait "$worker"
echo

show surefoot sagas list
show surefoot sagas show order-2
show surefoot sagas show order-4
show python -m examples.checkout.partners partners.db
