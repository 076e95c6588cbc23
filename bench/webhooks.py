"""Verified, deduplicated webhook events per second: ``WebhookReceiver``, the sender's verify, bare.

``WebhookReceiver`` (on SQLite and on Redis) beside (a) the same app whose handler calls
only the sender library's own verify, with no deduplication, and (b) the bare app.

Usage::

    .venv/bin/python bench/webhooks.py                      # 3 rounds x 8 s per run, ~5 min
    .venv/bin/python bench/webhooks.py --quick              # 1 round x 2 s: a smoke run
    .venv/bin/python bench/webhooks.py --json results.json --check
    .venv/bin/python bench/webhooks.py --configs redis --workloads unique   # and the baselines

Theory of operation:
1. Each configuration (``CONFIGS``) is one uvicorn process (uvloop, httptools, one worker,
   no access log) serving the Starlette app of ``make_app`` below (``webhooks:make_app``,
   ``--factory``) on 127.0.0.1 and a free port; environment variables tell it which one.
   Every configuration's handler does the same trivial work per event: it takes the
   event's JSON, counts it by its ``type`` and answers 200 ``{"ok":true}``.
   - ``bare`` (b): the handler parses the body itself and verifies nothing;
   - ``sdk-verify`` (a): the handler calls the sender library's own
     ``standardwebhooks.Webhook(secret).verify(body, headers)`` (one ``Webhook`` made at
     start; it returns the parsed JSON; a failure answers 401) and deduplicates nothing;
   - ``sqlite``, ``redis``: the app behind ``WebhookReceiver`` with one
     ``WebhookEndpoint`` (``StandardWebhooks`` v1, HMAC-SHA256, its defaults: 5 min
     tolerance, 7 days retention, default hooks) on a fresh ``SqliteStore`` file or a
     ``RedisStore`` under a key prefix of its own; the handler takes the verified event
     from ``scope["surefoot.webhook"]``.
2. Each run starts a fresh server (and store), waits until it answers, and checks that it
   behaves: a signed new event runs the handler once; delivered again, the receiver
   answers with its stored 200 (``Idempotent-Replayed: true``) without running it, where
   (a) and (b) run it again; a delivery signed with another secret is refused by the
   receiver and by (a) and never runs the handler (only (b) takes it).
3. wrk cannot sign with HMAC-SHA256 fast enough in Lua, so the requests are built and
   signed here (by ``standardwebhooks.Webhook.sign``, the sender library) just before
   each wrk run, with the time of that moment as their timestamp: a run lasts seconds,
   well inside both sides' 5 minute tolerance, so no tolerance is widened. Every request
   is a whole HTTP/1.1 request of the same length (the JSON body is padded with spaces),
   written to one file per wrk thread; the wrk script (``LUA``, written to a temporary
   file) reads its thread's file at start and sends its requests in order.
4. The workloads: ``unique``, every request a new event (a new ``webhook-id``, the normal
   case: verify, reserve, run, store). The files of a timed run hold 2.5 times as many
   events as the warm-up's rate would send (``--max-rate`` per second without a warm-up);
   the script counts any request sent past the end of its file, and a run that repeated
   an event id fails its checks. ``duplicate``: ``--duplicates`` events, each delivered
   once before the warm-up, then redelivered over and over by every connection (the
   sender's retries: verify, then the stored answer).
5. After each timed run the app says how many events it ran: for ``unique`` (and for (a)
   and (b) in ``duplicate``) between the requests wrk completed and that plus the
   connections (the requests still in flight when wrk stopped); for the receiver in
   ``duplicate``, none. A failed check counts as an error; an answer of 400 or more
   (wrk's status errors: none of these apps answers 1xx or 3xx, and a 2xx or a 4xx/5xx
   is all the receiver sends), a socket error or a timeout (5 s) is an error too, and a
   configuration with errors misses its target (a refused request is cheap).
6. Runs are interleaved: every round runs every configuration in every workload once,
   in an order rotated each round, so ratios are taken within a round (to (a) and to
   (b) of the same workload) and a noisy machine's drift hits both sides alike; the
   table shows medians over rounds. With two CPUs or more and ``taskset``, the server is
   pinned to one CPU, wrk and the private ``redis-server`` (or ``--redis-url``'s) to
   another. CPU us/req is the server process's CPU time over the requests wrk completed;
   Redis us the Redis server's.

The target (issue 15): ``WebhookReceiver`` on Redis, new events, at least 0.7 of (a)'s
req/s, without errors. The other rows carry no target.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import _harness as h

PATH = "/webhooks/partner"
ENDPOINT = "partner"
OK = b'{"ok":true}'
ENV_IMPL = "SUREFOOT_BENCH_WEBHOOKS_IMPL"
ENV_STORE = "SUREFOOT_BENCH_WEBHOOKS_STORE"
ENV_SECRET = "SUREFOOT_BENCH_WEBHOOKS_SECRET"
#: each event's body, padded with spaces to BODY_LENGTH bytes (JSON allows trailing spaces).
BODY = (
    '{"type":"%s","timestamp":"%s","data":{"id":"in_%09d","customer":"cus_4QFJOjw2pOmAGJ",'
    '"amount":%d,"currency":"eur","status":"paid"}}'
)
BODY_LENGTH = 200
TYPES = ("invoice.paid", "invoice.created", "customer.updated", "charge.refunded")
#: the line the wrk script prints beside the harness's summary.
WRAPPED_PREFIX = "SUREFOOT_WEBHOOKS "
#: a timed run's unique events: this many times the warm-up's rate times the duration.
MARGIN = 2.5

LUA = """\
-- wrk script of bench/webhooks.py (written there at run time): each thread sends the
-- pre-built, signed requests of its own file in order.
-- Usage: wrk ... -s THIS URL -- FILES LENGTH MODE
--   FILES: the files' path but for the thread's number, FILES.1, FILES.2...
--   LENGTH: every request's length in bytes (all are alike).
--   MODE "once": past the end of its file a thread starts it over and counts each
--   request sent again; "cycle": it starts over freely (the duplicate workload).
-- done() prints 'SUREFOOT_WEBHOOKS {"wrapped":N}', then the harness's summary line.
dofile(@SUMMARY@)

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

local data, length, count, once
local index, passes = 0, 0
wrapped = 0

function init(args)
   local file = assert(io.open(args[1] .. "." .. id, "rb"))
   data = file:read("*a")
   file:close()
   length = tonumber(args[2])
   count = #data / length
   if count < 1 or count ~= math.floor(count) then
      error("expected whole requests of " .. length .. " bytes in " .. args[1] .. "." .. id)
   end
   if args[3] ~= "once" and args[3] ~= "cycle" then
      error("mode: expected once or cycle, got " .. tostring(args[3]))
   end
   once = args[3] == "once"
end

function request()
   if index >= count then
      index, passes = 0, passes + 1
   end
   if once and passes > 0 then
      wrapped = wrapped + 1
   end
   local start = index * length
   index = index + 1
   return string.sub(data, start + 1, start + length)
end

local summarize = done

function done(summary, latency, requests)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + thread:get("wrapped")
   end
   io.write(string.format('SUREFOOT_WEBHOOKS {"wrapped":%d}\\n', total))
   summarize(summary, latency, requests)
end
"""


@dataclass(frozen=True)
class Config:
    name: str
    impl: str  # "bare" (b), "sdk" (a) or "surefoot"
    store: str  # "sqlite" or "redis" for surefoot, else ""
    meaning: str


BARE, SDK = "bare", "sdk-verify"
CONFIGS = (
    Config(BARE, "bare", "", "(b) the app alone: parses the body, verifies nothing, no dedup"),
    Config(
        SDK,
        "sdk",
        "",
        "(a) the app whose handler calls standardwebhooks.Webhook(secret).verify(body, "
        "headers) (one Webhook made at start); no dedup",
    ),
    Config(
        "sqlite",
        "surefoot",
        "sqlite",
        "WebhookReceiver (StandardWebhooks v1, its defaults) on a SqliteStore file",
    ),
    Config(
        "redis",
        "surefoot",
        "redis",
        "WebhookReceiver (StandardWebhooks v1, its defaults) on RedisStore",
    ),
)


@dataclass(frozen=True)
class Workload:
    name: str
    meaning: str


WORKLOADS = (
    Workload("unique", "every request a new event, signed moments before its run"),
    Workload("duplicate", "the same few events, delivered once before, redelivered"),
)
#: the least req/s ratio to (a) of a (workload, configuration).
TARGETS = {("unique", "redis"): 0.7}


# -- the server -------------------------------------------------------------------------------


def make_app() -> Any:
    """The app of one configuration (uvicorn ``--factory``), from the environment."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    impl = os.environ[ENV_IMPL]
    secret = os.environ[ENV_SECRET]
    tally: Counter[str] = Counter()

    def handle(event: dict[str, Any]) -> Response:
        tally[event["type"]] += 1
        return Response(OK, media_type="application/json")

    if impl == "bare":

        async def receive(request: Request) -> Response:
            return handle(json.loads(await request.body()))

    elif impl == "sdk":
        from standardwebhooks import Webhook, WebhookVerificationError

        webhook = Webhook(secret)

        async def receive(request: Request) -> Response:
            body = await request.body()
            try:
                event = webhook.verify(body, request.headers)  # type: ignore[arg-type]
            except WebhookVerificationError:
                return Response(status_code=401)
            return handle(event)

    elif impl == "surefoot":
        from surefoot.webhooks import WEBHOOK

        async def receive(request: Request) -> Response:
            return handle(request.scope[WEBHOOK].json())

    else:
        raise ValueError(f"{ENV_IMPL}: expected bare, sdk or surefoot, got {impl!r}")

    async def stats(request: Request) -> Response:
        return JSONResponse({"events": sum(tally.values()), "by_type": tally})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route(PATH, receive, methods=["POST"]),
            Route("/stats", stats),
            Route("/health", health),
        ]
    )
    if impl != "surefoot":
        return app
    from surefoot.storage import store_from_url
    from surefoot.webhooks import StandardWebhooks, WebhookEndpoint, WebhookReceiver

    endpoint = WebhookEndpoint(name=ENDPOINT, scheme=StandardWebhooks(secrets=(secret,)))
    store = store_from_url(os.environ[ENV_STORE])
    return WebhookReceiver(app, endpoints={PATH: endpoint}, store=store)


# -- the sender -------------------------------------------------------------------------------


class Sender:
    """Signs events as a Standard Webhooks sender does (the reference library's ``sign``),
    each with a new id: ``msg_`` + this sender's nonce + a number, all of one length."""

    def __init__(self, secret: str, host: str) -> None:
        from standardwebhooks import Webhook

        self.webhook = Webhook(secret)
        self.host = host
        self.nonce = secrets.token_hex(6)
        self.next = 0

    def take(self, count: int) -> range:
        """The numbers of ``count`` events never signed before by this sender."""
        numbers = range(self.next, self.next + count)
        self.next += count
        return numbers

    def signed(self, numbers: range) -> list[tuple[dict[str, str], bytes]]:
        """Each event's headers and body, signed now."""
        now = datetime.now(UTC).replace(microsecond=0)
        stamp, iso = str(int(now.timestamp())), now.strftime("%Y-%m-%dT%H:%M:%SZ")
        sign = self.webhook.sign
        events = []
        for n in numbers:
            event_id = f"msg_{self.nonce}{n:09d}"
            text = BODY % (TYPES[n % len(TYPES)], iso, n, 1000 + n % 9000)
            body = text.ljust(BODY_LENGTH).encode()
            headers = {
                "content-type": "application/json",
                "webhook-id": event_id,
                "webhook-timestamp": stamp,
                "webhook-signature": sign(event_id, now, body),
            }
            events.append((headers, body))
        if any(len(body) != BODY_LENGTH for _, body in events):
            raise h.BenchError(f"an event body is longer than {BODY_LENGTH} bytes")
        return events

    def raw(self, events: list[tuple[dict[str, str], bytes]]) -> list[bytes]:
        """The events as whole HTTP/1.1 requests."""
        head = f"POST {PATH} HTTP/1.1\r\nHost: {self.host}\r\n"
        return [
            (
                head
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                + f"content-length: {len(body)}\r\n\r\n"
            ).encode("latin-1")
            + body
            for headers, body in events
        ]

    def write(
        self, files: Path, events: list[tuple[dict[str, str], bytes]], threads: int, split: bool
    ) -> int:
        """The requests of ``events`` in ``files.1`` ... ``files.N``, one file per wrk
        thread: dealt out (``split``, no request in two files) or all in each. Returns
        the length of a request."""
        requests = self.raw(events)
        length = len(requests[0])
        if any(len(r) != length for r in requests):
            raise h.BenchError("the signed requests are not all of one length")
        for thread in range(threads):
            mine = requests[thread::threads] if split else requests
            if not mine:
                raise h.BenchError(f"no request for wrk thread {thread + 1}")
            Path(f"{files}.{thread + 1}").write_bytes(b"".join(mine))
        return length


def forged(events: list[tuple[dict[str, str], bytes]]) -> list[tuple[dict[str, str], bytes]]:
    """The events with the signature of another secret."""
    from standardwebhooks import Webhook

    other = Webhook("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    out = []
    for headers, body in events:
        stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
        signature = other.sign(headers["webhook-id"], stamp, body)
        out.append(({**headers, "webhook-signature": signature}, body))
    return out


# -- setup ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, rounds=3, quick={"rounds": 1, "duration": 2})
    h.add_wrk_options(parser, duration=8)
    h.option(
        parser, "--duplicates", 16, "events redelivered over and over in the duplicate workload"
    )
    h.option(
        parser,
        "--max-rate",
        30_000,
        "req/s that a unique run's files are sized for when there is no warm-up to measure "
        f"(with one: {MARGIN:g} times its rate)",
    )
    h.add_selection(parser, "--configs", CONFIGS, BARE, SDK)
    names = ",".join(w.name for w in WORKLOADS)
    parser.add_argument(
        "--workloads", default="", help=f"comma-separated of {names} (default: all)"
    )
    h.add_pin_options(parser, what="the server and wrk")
    h.add_redis_options(parser, used_by="the redis configuration", store_options=True)
    h.add_output_options(parser)
    args = h.parse(parser, argv)
    chosen = h.names(parser, "--workloads", args.workloads, (w.name for w in WORKLOADS))
    args.workloads = [w for w in WORKLOADS if not chosen or w.name in chosen]
    h.check_wrk_options(parser, args)
    if args.duplicates < 1 or args.max_rate < 1:
        parser.error("expected --duplicates and --max-rate >= 1")
    return args


def check_tools(configs: Sequence[Config]) -> None:
    h.require_executable("wrk")
    h.require_modules(["uvicorn", "uvloop", "httptools", "starlette"], "bench")
    modules = ["surefoot", "standardwebhooks"]  # the sender's library: the test extra's
    if any(c.store == "redis" for c in configs):
        modules.append("redis")
    h.require_modules(modules, "test")


@dataclass
class Context:
    args: argparse.Namespace
    cpus: h.CpuPlan
    redis: h.BenchRedis | None
    lua: Path


# -- one run ----------------------------------------------------------------------------------


def start_server(ctx: Context, config: Config, workdir: Path, secret: str, prefix: str) -> h.Child:
    store = ""
    if config.store == "sqlite":
        store = f"sqlite:///{workdir / 'webhooks.db'}"
    elif config.store == "redis":
        if ctx.redis is None:
            raise h.BenchError(f"{config.name}: no Redis server")
        store = h.with_query(ctx.redis.url, f"prefix={prefix}:", ctx.args.redis_options)
    env = {ENV_IMPL: config.impl, ENV_STORE: store, ENV_SECRET: secret}
    port = h.free_port()
    command = [*h.uvicorn_command("webhooks:make_app", port, prefix=ctx.cpus.server), "--factory"]
    return h.Child(config.name, command, workdir / "server.log", env, port)


def events_run(server: h.Child) -> int:
    status, _, body = h.http(server.base + "/stats")
    if status != 200:
        raise h.BenchError(f"{server.name}: GET /stats answered {status}: {body[:200]!r}")
    return int(json.loads(body)["events"])


def deliver(
    server: h.Child, events: list[tuple[dict[str, str], bytes]]
) -> list[tuple[int, dict[str, str], bytes]]:
    return [h.http(server.base + PATH, "POST", body, headers) for headers, body in events]


def check_behaviour(config: Config, server: h.Child, sender: Sender) -> None:
    """Step 2 of the theory of operation; a ``BenchError`` says what went wrong."""

    def fail(what: str, answer: tuple[int, dict[str, str], bytes]) -> NoReturn:
        status, headers, body = answer
        replayed = headers.get("idempotent-replayed")
        raise h.BenchError(
            f"{config.name}: {what}; got {status} (Idempotent-Replayed {replayed!r}): "
            f"{body[:200]!r}{server.died()}"
        )

    events = sender.signed(sender.take(1))
    before = events_run(server)
    first = deliver(server, events)[0]
    if first[0] != 200 or first[2] != OK or events_run(server) != before + 1:
        fail('a new event should run the handler once and answer 200 {"ok":true}', first)
    again = deliver(server, events)[0]
    ran = events_run(server) - before - 1
    if config.impl == "surefoot":
        if again[0] != 200 or again[1].get("idempotent-replayed") != "true" or ran:
            fail("an event delivered again should be answered from the store, not run", again)
    elif again[0] != 200 or ran != 1:
        fail("without a receiver, an event delivered again should run again", again)
    before = events_run(server)
    wrong = deliver(server, forged(sender.signed(sender.take(1))))[0]
    ran = events_run(server) - before
    if config.impl == "bare":
        if wrong[0] != 200 or ran != 1:
            fail("the bare app should take any delivery", wrong)
    elif wrong[0] not in (400, 401) or ran:
        fail("a delivery signed with another secret should be refused (400 or 401)", wrong)


def run_one(ctx: Context, config: Config, workload: Workload, number: int) -> h.Run:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    prefix = f"sfbench-{secrets.token_hex(6)}"  # this server's keys on Redis
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-") as tmp:
        workdir = Path(tmp)
        server = start_server(ctx, config, workdir, secret, prefix)
        try:
            server.wait_http(server.base + "/health", timeout=120.0)
            sender = Sender(secret, f"127.0.0.1:{server.port}")
            check_behaviour(config, server, sender)
            run = measure(ctx, config, workload, server, sender, workdir)
        finally:
            server.stop()
            if config.store == "redis" and ctx.redis is not None:
                ctx.redis.delete(prefix)
    return {"round": number, "workload": workload.name, "config": config.name, **run}


def measure(
    ctx: Context,
    config: Config,
    workload: Workload,
    server: h.Child,
    sender: Sender,
    workdir: Path,
) -> h.Run:
    """The warm-up and the timed run of one server, and the checks of step 5."""
    args = ctx.args
    url = server.base + PATH
    threads = args.threads
    outputs: list[str] = []

    def load(files: Path, length: int, mode: str, duration: int) -> dict[str, Any]:
        result = h.wrk_load(args, ctx.cpus, ctx.lua, url, duration, [str(files), str(length), mode])
        outputs.append(result["output"])
        return result

    if workload.name == "duplicate":
        events = sender.signed(sender.take(args.duplicates))
        answers = deliver(server, events)
        refused = [a[0] for a in answers if a[0] != 200]
        if refused:
            raise h.BenchError(f"{config.name}: priming the duplicates answered {refused}")
        files = workdir / "duplicate"
        length = sender.write(files, events, threads, split=False)
        if args.warmup > 0:
            load(files, length, "cycle", args.warmup)
        timed_files, timed_length, mode = files, length, "cycle"
    else:
        rate = float(args.max_rate)
        if args.warmup > 0:
            files = workdir / "warmup"
            count = max(threads, math.ceil(args.max_rate * args.warmup))
            length = sender.write(files, sender.signed(sender.take(count)), threads, True)
            warm = h.wrk_figures(load(files, length, "cycle", args.warmup), "warm-up")
            rate = MARGIN * warm["rps"]
        count = max(1000 * threads, math.ceil(rate * args.duration))
        timed_files = workdir / "timed"
        events = sender.signed(sender.take(count))
        timed_length = sender.write(timed_files, events, threads, split=True)
        mode = "once"
    before = events_run(server)
    run = h.timed_wrk(
        server,
        ctx.redis,
        lambda: load(timed_files, timed_length, mode, args.duration),
        f"{config.name} {workload.name} in {args.duration} s",
    )
    time.sleep(0.5)  # the requests in flight when wrk stopped
    ran = events_run(server) - before
    wrapped = wrapped_count(outputs[-1])
    failures = []
    if wrapped:
        failures.append(f"{wrapped} requests sent an event id again (files too small)")
    requests = run["requests"]
    if workload.name == "duplicate" and config.impl == "surefoot":
        if ran:
            failures.append(f"the handler ran {ran} times for redelivered events")
    elif not requests - run["error_count"] <= ran <= requests + args.connections:
        failures.append(f"the handler ran {ran} times for {requests} requests")
    run["events_run"] = ran
    run["runs_per_request"] = ran / requests
    run["sent_again"] = wrapped
    run["check_failures"] = failures
    run["errors"] = {**run["errors"], "check": len(failures)}
    run["error_count"] += len(failures)
    return run


def wrapped_count(output: str) -> int:
    for line in output.splitlines():
        if line.startswith(WRAPPED_PREFIX):
            return int(json.loads(line.removeprefix(WRAPPED_PREFIX))["wrapped"])
    raise h.BenchError(f"the wrk script printed no {WRAPPED_PREFIX.strip()} line:\n{output}")


# -- rounds and the report --------------------------------------------------------------------


def rounds(ctx: Context, configs: Sequence[Config], workloads: Sequence[Workload]) -> list[h.Run]:
    """Every configuration in every workload once a round, in an order rotated each round."""
    pairs = [(w, c) for w in workloads for c in configs]
    runs = []
    for number in range(1, ctx.args.rounds + 1):
        for workload, config in h.rotated(pairs, number):
            run = run_one(ctx, config, workload, number)
            runs.append(run)
            print(
                f"  round {number} {workload.name:<9} {config.name:<10} {run['rps']:>9,.0f} "
                f"req/s  {run['cpu_us_per_request']:>5,.0f} CPU us/req  "
                f"p99 {run['latency_ms']['p99']:.1f} ms  errors {run['error_count']}",
                flush=True,
            )
    return runs


def summary_rows(
    configs: Sequence[Config], workloads: Sequence[Workload], runs: list[h.Run]
) -> list[h.Run]:
    """Per workload and configuration: medians over rounds, ratios to (a) and (b) taken
    within a round. A row meets its target only without errors."""
    rows = []
    for workload in workloads:
        sdk = h.by_round(runs, workload=workload.name, config=SDK)
        bare = h.by_round(runs, workload=workload.name, config=BARE)
        for config in configs:
            mine = h.by_round(runs, workload=workload.name, config=config.name)
            to_sdk = h.Spread.range(h.paired(mine, sdk, lambda r, b: r["rps"] / b["rps"]))
            to_bare = h.Spread.range(h.paired(mine, bare, lambda r, b: r["rps"] / b["rps"]))
            target = TARGETS.get((workload.name, config.name))
            errors = sum(r["error_count"] for r in mine.values())
            rows.append(
                {
                    "workload": workload.name,
                    "config": config.name,
                    "meaning": f"{config.meaning}; {workload.meaning}",
                    "rps": h.median(r["rps"] for r in mine.values()),
                    "ratio": to_sdk.median,
                    "ratio_min": to_sdk.low,
                    "ratio_max": to_sdk.high,
                    "ratio_to": SDK,
                    "ratio_bare": to_bare.median,
                    "ratio_bare_min": to_bare.low,
                    "ratio_bare_max": to_bare.high,
                    "target": target,
                    "met": None if target is None else to_sdk.median >= target and not errors,
                    "cpu_us_per_request": h.median(r["cpu_us_per_request"] for r in mine.values()),
                    "redis_cpu_us_per_request": h.median_known(
                        r["redis_cpu_us_per_request"] for r in mine.values()
                    ),
                    "p99_ms": h.median(r["latency_ms"]["p99"] for r in mine.values()),
                    "rss_mib": h.median_known(r["rss_mib"] for r in mine.values()),
                    "runs_per_request": h.median(r["runs_per_request"] for r in mine.values()),
                    "errors": errors,
                }
            )
    return rows


def print_rows(rows: Sequence[h.Run], runs: Sequence[h.Run], args: argparse.Namespace) -> None:
    columns = (
        h.Column("workload", "<9"), h.Column("config", "<10"), h.Column("req/s", ">7"),
        *h.ratio_columns("x (a)", 5), h.Column("x (b)", ">5"), h.Column("CPU us/req", ">10"),
        h.Column("Redis us", ">8"), h.Column("p99 ms", ">7"), h.Column("runs/req", ">8"),
        h.Column("errors", ">6"),
    )  # fmt: skip
    cells = [
        [
            row["workload"],
            row["config"],
            f"{row['rps']:,.0f}",
            *h.ratio_cells(row, ">="),
            f"{row['ratio_bare']:.2f}",
            f"{row['cpu_us_per_request']:,.0f}",
            h.num(row["redis_cpu_us_per_request"], ",.1f"),
            f"{row['p99_ms']:.1f}",
            f"{row['runs_per_request']:.2f}",
            str(row["errors"]),
        ]
        for row in rows
    ]
    print("\n".join(h.text_table(columns, cells)))
    print()
    print("req/s, CPU us/req, p99: median over rounds.")
    print(f"x (a): median of the per-round req/s ratios to {SDK} in the same workload")
    print("       (min-max: their spread); the figure the target applies to.")
    print(f"x (b): the same, to {BARE}.")
    print("CPU us/req: server CPU time (user + system) per request during the timed run;")
    print("Redis us: the Redis server's (every configuration runs while it is up).")
    print("runs/req: times the handler ran per request answered (0 for a replayed event).")
    print("errors: wrk socket errors, timeouts (over 5 s), answers >= 400 and failed checks")
    print("       (a repeated event id, a wrong count of handler runs), all rounds; a")
    print("       configuration with errors does not meet its target.")
    print()
    h.print_per_round(
        list(runs),
        "config",
        [w.name for w in args.workloads],
        lambda r: f"{r['rps']:>8,.0f}",
        10,
        args.rounds,
        "req/s",
        group="workload",
    )
    failed = [r for r in runs if r["error_count"]]
    if failed:
        print("\nWARNING: some requests failed or a check did not hold:")
        for r in failed:
            kinds = ", ".join(f"{n} {k}" for k, n in r["errors"].items() if n)
            said = "; ".join(r["check_failures"])
            print(f"  round {r['round']} {r['workload']} {r['config']}: {kinds}. {said}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs: list[Config] = args.configs
    workloads: list[Workload] = args.workloads
    check_tools(configs)
    cpus = h.split_cpus(args.no_pin)
    uses_redis = any(c.store == "redis" for c in configs)
    # On wrk's CPU: the server measured keeps its core, as with an in-process store.
    redis = h.BenchRedis(args.redis_url, cpus.load, args.redis_server) if uses_redis else None
    packages = ("surefoot", "standardwebhooks", "uvicorn", "uvloop", "httptools", "starlette")
    context: dict[str, Any] = {
        "command": args.command,
        "cpus": cpus.sentence,
        "redis": ("not used" if redis is None else redis.where(cpus.load))
        + f"; store options: {args.redis_options or 'the defaults'}",
        "environment": h.environment(
            (*packages, *(("redis",) if uses_redis else ())), {"wrk": ["wrk", "--version"]}
        ),
        "load_before": h.load_average(),
    }
    total = args.rounds * len(configs) * len(workloads) * (args.duration + args.warmup)
    print(
        f"{len(configs)} configurations x {len(workloads)} workloads x {args.rounds} rounds, "
        f"about {total} s of load; {cpus.sentence}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="surefoot-bench-webhooks-") as tmp:
        lua = Path(tmp) / "webhooks.lua"
        summary = json.dumps(str(h.BENCH_DIR / "_wrk_summary.lua"))
        lua.write_text(LUA.replace("@SUMMARY@", summary))
        try:
            runs = rounds(Context(args, cpus, redis, lua), configs, workloads)
        finally:
            if redis is not None:
                redis.stop()
    context["load_after"] = h.load_average()
    rows = summary_rows(configs, workloads, runs)
    load = (
        f"wrk {args.threads} threads, {args.connections} connections, POST {PATH} "
        f"(Standard Webhooks v1, a {BODY_LENGTH}-byte JSON body), {args.duration} s per run "
        f"after {args.warmup} s warm-up, {args.rounds} round(s), interleaved"
    )
    h.print_header(
        context,
        [
            ("load", load),
            ("events", "unique: a new webhook-id per request, signed just before its run; "
             f"duplicate: {args.duplicates} events delivered once, then again and again"),
            ("redis", context["redis"]),
            ("cpus", context["cpus"]),
        ],
        "uvicorn {uvicorn} (uvloop {uvloop}, httptools {httptools}), starlette {starlette}, "
        "standardwebhooks {standardwebhooks}, {wrk}",
    )  # fmt: skip
    print()
    print_rows(rows, runs, args)
    used = h.settings(
        args, "rounds", "duration", "warmup", "connections", "threads", "duplicates", "max_rate"
    )
    return h.finish(
        args,
        context,
        used,
        rows,
        runs,
        configs=[asdict(c) for c in configs],
        workloads=[asdict(w) for w in workloads],
        targets=[{"workload": w, "config": c, "ratio_to": SDK, "least": t}
                 for (w, c), t in TARGETS.items()],
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(h.run(main))
