#!/usr/bin/env bash
# The sessions shown in docs/probe.md, run for real in a scratch directory:
#     bash examples/probe/session.sh > session.txt
# Probes the legacy payments API alone, then behind `surefoot serve`, with
# examples/probe/probe.toml. Needs the project's venv (.venv/bin on PATH) and free ports
# 8000 and 8081.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$ROOT/.venv/bin:$PATH" PYTHONPATH="$ROOT" COLUMNS=120
WORK=$(mktemp -d)
cd "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# Prints the command after "$ ", then runs it; a non-zero exit status is shown, not fatal.
show() {
    echo "\$ $*"
    local status=0
    "$@" 2>&1 || status=$?
    [[ $status == 0 ]] || echo "(exit status $status)"
    echo
}
ready() { until curl -sf http://127.0.0.1:8000/health > /dev/null; do sleep 0.1; done; }

cp "$ROOT/examples/probe/probe.toml" .
export PARTNER_KEY=sk_test_acme PARTNER_KEY_2=sk_test_other

echo '$ python -m examples.legacy_payments --port 8000 --ledger ledger.db &'
python -m examples.legacy_payments --port 8000 --ledger ledger.db > legacy.log 2>&1 &
LEGACY=$!
ready
echo
show surefoot probe --config probe.toml --dry-run
show surefoot probe --config probe.toml --markdown legacy.md --policy legacy-policy.toml --name legacy
show cat legacy-policy.toml
kill $LEGACY
wait $LEGACY 2>/dev/null || true

echo "\$ surefoot serve --config $ROOT/examples/gateway.toml --port 8000 &" | sed "s|$ROOT/||"
surefoot serve --config "$ROOT/examples/gateway.toml" --port 8000 > gateway.log 2>&1 &
ready
echo
show surefoot probe --config probe.toml --markdown gateway.md --policy gateway-policy.toml --name payments
show cat gateway-policy.toml
# The top of each Markdown report (each finding follows, with its evidence).
for report in legacy.md gateway.md; do
    echo "\$ sed -n '1,/^## /p' $report | head -n -1"
    sed -n '1,/^## /p' $report | head -n -1
    echo
done
# One finding whole, with its evidence.
echo "\$ awk '/^## create-charge: replay/ {p = 1; print; next} /^## / {p = 0} p' legacy.md"
awk '/^## create-charge: replay/ {p = 1; print; next} /^## / {p = 0} p' legacy.md
