#!/usr/bin/env bash
# The login session shown in docs/abuse.md, run for real in a scratch directory:
#     bash examples/login/session.sh > session.txt
# Each command is printed after "$ ", then its output. Needs the project's venv
# (.venv/bin on PATH: surefoot, python), curl, free ports 8710 and 8711, and source
# addresses 127.0.5.1-8 on the loopback interface (Linux routes all of 127/8 there).
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

# How many entries of one action and kind the gateway has in force (to wait for a sync).
in_force() { # ACTION KIND
    curl -s -H "Authorization: Bearer $SUREFOOT_ADMIN_TOKEN" \
        "http://127.0.0.1:8711/admin/bans?action=$1&kind=$2" |
        python -c 'import json, sys; print(json.load(sys.stdin)["total"])'
}

cp "$ROOT/examples/login/gateway.toml" .
export SUREFOOT_ADMIN_TOKEN=admin-secret-for-the-demo

echo '$ surefoot serve --config gateway.toml --port 8710 --admin-port 8711 &'
surefoot serve --config gateway.toml --port 8710 --admin-port 8711 > gateway.log 2>&1 &
until curl -sf http://127.0.0.1:8711/healthz > /dev/null; do
    sleep 0.1
done
echo

# A real user, bob, mistypes his password twice, then gets it right.
login() { # SOURCE-ADDRESS USER PASSWORD
    show curl -s --interface "$1" -w ' %{http_code}\n' http://127.0.0.1:8710/login \
        -H 'content-type: application/json' -d "{\"username\": \"$2\", \"password\": \"$3\"}"
}
login 127.0.0.1 bob hunter2
login 127.0.0.1 bob hunter3
login 127.0.0.1 bob hunter2-but-longer

# Credential stuffing: one account, a new address each attempt. The fifth failure bans
# the account at once (login-account: threshold 5); the rest never reach the app.
for n in 1 2 3 4 5 6 7 8; do
    login "127.0.5.$n" alice "leaked-password-$n"
done
# What the client sees, even with alice's real password.
echo "\$ curl -s --interface 127.0.5.9 http://127.0.0.1:8710/login -H 'content-type: application/json' \\
    -d '{\"username\": \"alice\", \"password\": \"correct horse battery staple\"}' | python -m json.tool"
curl -s --interface 127.0.5.9 http://127.0.0.1:8710/login -H 'content-type: application/json' \
    -d '{"username": "alice", "password": "correct horse battery staple"}' | python -m json.tool
echo
# The app saw bob's 3 attempts and the first 5 against alice, nothing after the ban.
show curl -s http://127.0.0.1:8710/attempts
echo

show surefoot bans list --config gateway.toml
echo "\$ curl -s -H \"Authorization: Bearer \$SUREFOOT_ADMIN_TOKEN\" http://127.0.0.1:8711/admin/bans | python -m json.tool"
curl -s -H "Authorization: Bearer $SUREFOOT_ADMIN_TOKEN" http://127.0.0.1:8711/admin/bans |
    python -m json.tool
echo

# The operator bans the attacker's network for two hours, and lifts alice's ban once
# she has called support. Both reach the gateway within [abuse] sync_every (1 s).
show surefoot bans add --config gateway.toml --network 127.0.5.0/24 --for 2h \
    --reason "credential stuffing against alice" --by ops
show surefoot bans remove --config gateway.toml --account alice --reason "user called support" \
    --by ops
until [[ $(in_force ban network) == 1 && $(in_force ban account) == 0 ]]; do
    sleep 0.1
done
login 127.0.5.9 alice "leaked-password-9"
login 127.0.0.1 alice "correct horse battery staple"

show surefoot bans list --config gateway.toml
show python -m json.tool --json-lines abuse.jsonl
# The series of abuse protection that are not 0.
echo "\$ curl -s -H \"Authorization: Bearer \$SUREFOOT_ADMIN_TOKEN\" http://127.0.0.1:8711/metrics | grep '^surefoot_abuse_' | grep -v -e _created -e ' 0.0\$'"
curl -s -H "Authorization: Bearer $SUREFOOT_ADMIN_TOKEN" http://127.0.0.1:8711/metrics |
    grep '^surefoot_abuse_' | grep -v -e _created -e ' 0.0$'
