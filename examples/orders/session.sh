#!/usr/bin/env bash
# The contract-evolution session shown in docs/contracts.md, run for real in a scratch
# directory:
#     bash examples/orders/session.sh > session.txt
# Each command is printed after "$ ", then its output. Needs the project's venv
# (.venv/bin on PATH: surefoot, python), curl, and free ports 8720 and 8721.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$ROOT/.venv/bin:$PATH" PYTHONPATH="$ROOT" COLUMNS=110
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

cp "$ROOT/examples/orders/gateway.toml" .
export SUREFOOT_ADMIN_TOKEN=admin-secret-for-the-demo
export ACME_KEY=sk_acme_demo GLOBEX_KEY=sk_globex_demo BANK_KEY=sk_bank_demo
ADMIN=(-H "Authorization: Bearer $SUREFOOT_ADMIN_TOKEN")

echo '$ surefoot serve --config gateway.toml --port 8720 --admin-port 8721 &'
surefoot serve --config gateway.toml --port 8720 --admin-port 8721 > gateway.log 2>&1 &
until curl -sf http://127.0.0.1:8721/healthz > /dev/null; do
    sleep 0.1
done
echo

# A deprecated route still answers, and says so in every response.
show curl -si -H "X-API-Key: $ACME_KEY" http://127.0.0.1:8720/v1/orders
# Its retired neighbour does not.
run "curl -s -H \"X-API-Key: \$ACME_KEY\" http://127.0.0.1:8720/v1/customers | python -m json.tool"

# Versions: acme's first request pins it to the latest version; globex is pinned by the
# file to the first one, and may ask for another per request.
show curl -s -H "X-API-Key: $ACME_KEY" http://127.0.0.1:8720/v2/orders
echo
show curl -s -H "X-API-Key: $GLOBEX_KEY" http://127.0.0.1:8720/v2/orders
echo
show curl -s -H "X-API-Key: $GLOBEX_KEY" -H 'Surefoot-Version: 2025-03-10' \
    http://127.0.0.1:8720/v2/orders
echo
run "curl -s -H \"X-API-Key: \$GLOBEX_KEY\" -H 'Surefoot-Version: 2025-02-30' http://127.0.0.1:8720/v2/orders | python -m json.tool"

# The owner adds a brownout window starting now, and reloads: for ten minutes the
# deprecated route answers as it will after its sunset, except for the critical bank.
python - <<'PY'
from datetime import UTC, datetime
from pathlib import Path

path = Path("gateway.toml")
now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
window = f'[[routes.deprecation.brownouts]]\nstart = {now}\nduration = 600\n\n'
text = path.read_text()
second = text.index('[[routes]]\nmatch = "GET /v1/customers"')
path.write_text(text[:second] + window + text[second:])
PY
run "grep -A2 'routes.deprecation.brownouts' gateway.toml"
run "curl -s -X POST -H \"Authorization: Bearer \$SUREFOOT_ADMIN_TOKEN\" http://127.0.0.1:8721/admin/reload"
echo
run "curl -s -H \"X-API-Key: \$ACME_KEY\" http://127.0.0.1:8720/v1/orders | python -m json.tool"
show curl -s -o /dev/null -w '%{http_code}\n' -H "X-API-Key: $BANK_KEY" \
    http://127.0.0.1:8720/v1/orders
show curl -s -o /dev/null -w '%{http_code}\n' -H "X-API-Key: $GLOBEX_KEY" \
    http://127.0.0.1:8720/v1/orders

# Who still calls the deprecated route (merged across workers once they flush their counts).
until curl -s "${ADMIN[@]}" http://127.0.0.1:8721/admin/deprecations |
    python -c 'import json, sys; r = json.load(sys.stdin)["routes"][0]; sys.exit(len(r["callers"] or []) < 3)'; do
    sleep 0.5
done
run "curl -s -H \"Authorization: Bearer \$SUREFOOT_ADMIN_TOKEN\" 'http://127.0.0.1:8721/admin/deprecations?days=14' | python -m json.tool"
run "curl -s -H \"Authorization: Bearer \$SUREFOOT_ADMIN_TOKEN\" http://127.0.0.1:8721/admin/versions | python -m json.tool"
echo "\$ curl -s -H \"Authorization: Bearer \$SUREFOOT_ADMIN_TOKEN\" http://127.0.0.1:8721/metrics | grep -e '^surefoot_deprecated' -e '^surefoot_version'"
curl -s "${ADMIN[@]}" http://127.0.0.1:8721/metrics | grep -e '^surefoot_deprecated' -e '^surefoot_version'
