"""Where a request's instructions go: callgrind, attributed to the stack's components.

Usage::

    .venv/bin/python bench/profile_components.py                      # every stack, ~12 minutes
    .venv/bin/python bench/profile_components.py --configs ratelimit-memory --tree
    .venv/bin/python bench/profile_components.py --configs none --decisions token_bucket
    .venv/bin/python bench/profile_components.py --configs none --gc 100000

Theory of operation:
1. ``bench/instructions.py`` gives one stable figure per request; this script splits it.
   CPython 3.11 runs every Python function inside the same C functions, so callgrind alone
   cannot tell them apart. The child (``--child``) therefore replaces each component's
   functions (``COMPONENTS``: module, attribute, component name) with a wrapper that runs
   the original through one of 128 distinct C functions (``sf_slot_N``, in a tiny
   extension compiled on first use with the system's ``cc``): callgrind's inclusive cost
   of ``sf_slot_N`` is then the inclusive cost of that component. A slot is one
   (parent component, component) pair, so nesting is known and each component's own
   ("self") cost is its inclusive cost minus its children's. A coroutine is wrapped step
   by step (each ``send`` runs in the slot), so what runs while it is suspended (the
   event loop, SQLite's group commit) is not charged to it. Nothing in ``src/`` changes.
2. The requests are those of ``bench/instructions.py`` (its configurations, its driver
   and checks), run twice under callgrind (``--small`` and ``--large`` requests); every
   figure is the difference over the extra requests, so start-up and warm-up cancel out.
   The same child without wrappers gives the unmetered figure. The wrappers cost
   instructions of their own, charged to the caller's component: ``calibrate`` measures
   them (no-op calls with and without a wrapper: about 4,700 per call and 13,700 per
   awaited coroutine) and each caller's figures are given without them. What is left of
   that error shows in the "outside the stack" line, which should be bare's wherever
   nothing suspends (within about 7,000 instructions for the middlewares, 18,000 for
   the gateway).
3. ``outside the stack`` is everything not under the ``stack`` root: the driver (scope,
   checks), the event loop's turns, and whatever the loop runs between steps (SQLite's
   ``_flush``, a component of its own); ``bare`` shows what it is without middleware.
4. ``--decisions``: one in-process rate-limit decision (``MemoryStore.acquire_now``, one
   prebuilt ``Item``, 1,000 keys cycled, as in ``bench/ratelimit_decisions.py``) against
   the floor's token bucket, each piece measured by itself (instructions per call of a
   loop with and without it), not with wrappers, which would cost as much as a decision.
5. ``--gc N``: N POSTs with new keys, in process, through ``bench/_idempotency_app.py``'s
   surefoot app (``memory://?on_full=evict``) and its floor, each prefilled with 10,000
   records as the wrk benchmark is, every collection timed with ``gc.callbacks``; each in
   a fresh interpreter, and surefoot once more with ``gc.freeze()`` after the prefill.
   Wall-clock figures: they say whether collections explain slow requests, not a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _harness as h
import instructions as ins

bare = ins.bare  # the gateway's "[upstream] app = __main__:bare" (the child replaces it)

SLOTS = 128
ROOT = "stack"
OUTSIDE = "outside the stack (driver, event loop)"

#: (module, attribute path, component). Functions imported by name into a module are
#: patched where they are looked up.
COMPONENTS: tuple[tuple[str, str, str], ...] = (
    ("instructions", "bare", "the app (bare)"),
    # ASGI plumbing shared by the middlewares and the gateway
    ("surefoot.ratelimit.middleware", "canonicalize", "path canonicalisation"),
    ("surefoot.idempotency.middleware", "canonicalize", "path canonicalisation"),
    ("surefoot.gateway._gateway", "canonicalize", "path canonicalisation"),
    ("surefoot.identity", "Identity.__call__", "identity / principal"),
    ("surefoot.identity", "Identity.credentials", "identity / principal"),
    ("surefoot.identity", "Identity.rate_limit_principal", "identity / principal"),
    ("surefoot.identity", "Identity.address_principal", "identity / principal"),
    # rate limiting
    ("surefoot.ratelimit.middleware", "RateLimitMiddleware.__call__", "rate-limit middleware"),
    ("surefoot.ratelimit._limiter", "RateLimiter.check", "limiter.check"),
    ("surefoot.ratelimit._plan", "Plan.covering", "policy lookup"),
    ("surefoot.ratelimit._limiter", "RateLimiter._checks", "policy lookup"),
    ("surefoot.storage.memory", "MemoryStore.acquire_now", "store call"),
    ("surefoot.storage.sqlite", "SqliteStore.acquire", "store call"),
    ("surefoot.ratelimit._algorithms", "SlidingWindow.decide", "core decision"),
    ("surefoot.ratelimit._algorithms", "TokenBucket.decide", "core decision"),
    ("surefoot.ratelimit._limiter", "RateLimiter._verdict", "verdict"),
    ("surefoot.ratelimit._limiter", "RateLimiter._headers", "header building"),
    ("surefoot.ratelimit.middleware", "_with_headers", "header building"),
    ("surefoot.ratelimit._limiter", "RateLimiter._emit", "events / hooks"),
    # idempotency
    ("surefoot.idempotency.middleware", "IdempotencyMiddleware.__call__", "idempotency middleware"),
    ("surefoot.idempotency.middleware", "_Responder.read_body", "read body"),
    ("surefoot.idempotency.middleware", "_Responder.read_key", "key + JSON body parse"),
    ("surefoot.idempotency.middleware", "scoped_key", "scoped key"),
    ("surefoot.idempotency.middleware", "fingerprint", "fingerprint"),
    ("surefoot.idempotency.middleware", "_Responder.emit", "events / hooks"),
    ("surefoot.idempotency.middleware", "_Responder.event", "events / hooks"),
    ("surefoot.storage.memory", "MemoryStore.begin", "store begin"),
    ("surefoot.storage.sqlite", "SqliteStore.begin", "store begin"),
    ("surefoot.storage.memory", "MemoryStore.finish", "store finish"),
    ("surefoot.storage.sqlite", "SqliteStore.finish", "store finish"),
    ("surefoot.storage.sqlite", "SqliteStore._flush", "SQLite group commit (loop callback)"),
    ("surefoot.storage.sqlite", "_decode", "SQLite row decode/encode"),
    ("surefoot.storage.sqlite", "_encode", "SQLite row decode/encode"),
    ("surefoot.idempotency", "begin", "core decision"),
    ("surefoot.idempotency", "finish", "core decision"),
    ("surefoot.idempotency.middleware", "_Responder.capture_send", "capture send (copy)"),
    ("surefoot.idempotency.middleware", "_Responder.settle", "settle"),
    ("surefoot.idempotency.middleware", "_Responder.outcome", "response copy for storage"),
    ("surefoot.idempotency.middleware", "_Responder.replay", "replay answer"),
    # the gateway
    ("surefoot.gateway._gateway", "Gateway.handle", "gateway.handle"),
    ("surefoot.gateway._gateway", "_clean_headers", "request headers, request id"),
    ("surefoot._routes", "RouteTable.match", "route match"),
    ("surefoot.gateway._metrics", "GatewayMetrics.inflight", "metrics"),
    ("surefoot.gateway._metrics", "GatewayMetrics.observe_request", "metrics"),
    ("surefoot.gateway._metrics", "GatewayMetrics.observe_upstream", "metrics"),
    ("surefoot.gateway._gateway", "_Webhooks.__call__", "webhooks layer"),
    ("surefoot.gateway.proxy", "ProxyApp.__call__", "proxy"),
    ("surefoot.gateway.proxy", "_Forward.build", "proxy: build upstream request"),
    ("surefoot.gateway.proxy", "_Forward.relay", "proxy: relay response"),
    ("surefoot.gateway._upstream", "AppUpstream.send", "upstream call (in-process app)"),
)

# -- the child: the meter ---------------------------------------------------------------------

C_SOURCE = """
#define PY_SSIZE_T_CLEAN
#include <Python.h>
typedef PyObject *(*slot_fn)(PyObject *, PyObject *, PyObject *);
#define SLOT(n) __attribute__((noinline)) PyObject *sf_slot_##n(PyObject *f, PyObject *a, \\
    PyObject *k) { PyObject *r = PyObject_Call(f, a, k); __asm__ volatile("" ::: "memory"); \\
    return r; }
%(defs)s
static slot_fn slots[] = {%(names)s};
static PyObject *call(PyObject *self, PyObject *const *args, Py_ssize_t n) {
    Py_ssize_t i = PyLong_AsSsize_t(args[0]);
    PyObject *kw = args[3] == Py_None ? NULL : args[3];
    return slots[i](args[1], args[2], kw);
}
static PyMethodDef methods[] = {{"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL, ""},
                                {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_sfmeter", "", -1, methods};
PyMODINIT_FUNC PyInit__sfmeter(void) { return PyModule_Create(&module); }
"""


def build_meter(where: Path) -> None:
    """Compile ``_sfmeter`` into ``where`` (once per run of the parent)."""
    source = C_SOURCE % {
        "defs": "\n".join(f"SLOT({i})" for i in range(SLOTS)),
        "names": ", ".join(f"sf_slot_{i}" for i in range(SLOTS)),
    }
    (where / "_sfmeter.c").write_text(source)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    command = [
        shutil.which("cc") or "cc", "-shared", "-fPIC", "-O1", "-fno-optimize-sibling-calls",
        "-fno-inline", f"-I{sysconfig.get_paths()['include']}", str(where / "_sfmeter.c"),
        "-o", str(where / f"_sfmeter{suffix}"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise h.BenchError(f"cannot compile the meter: {done.stderr[-2000:]}")


class Meter:
    """Runs each wrapped call in the slot of its (parent, component) pair."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call
        self.stack: list[str] = []
        self.slots: dict[tuple[str, str], int] = {}
        self.calls = [0] * SLOTS  # sync calls and coroutine steps, per slot
        self.starts = [0] * SLOTS  # coroutines started, per slot

    def slot(self, name: str) -> int | None:
        if name in self.stack:  # recursion: charged to the outer call
            return None
        key = (self.stack[-1] if self.stack else "", name)
        found = self.slots.get(key)
        if found is None:
            found = len(self.slots)
            if found >= SLOTS:
                raise h.BenchError("more (parent, component) pairs than slots")
            self.slots[key] = found
        return found

    def run(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kw: Any, first: bool = False
    ) -> Any:
        slot = self.slot(name)
        if slot is None:
            return fn(*args, **(kw or {}))
        self.calls[slot] += 1
        if first:
            self.starts[slot] += 1
        self.stack.append(name)
        try:
            return self.call(slot, fn, args, kw or None)
        finally:
            self.stack.pop()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            def wrapped_async(*args: Any, **kw: Any) -> Any:
                return _Steps(self, name, fn(*args, **kw))

            return wrapped_async

        def wrapped(*args: Any, **kw: Any) -> Any:
            return self.run(name, fn, args, kw)

        return wrapped


class _Steps:
    """Awaits a coroutine, running each of its steps in the component's slot."""

    __slots__ = ("coro", "meter", "name")

    def __init__(self, meter: Meter, name: str, coro: Any) -> None:
        self.meter, self.name, self.coro = meter, name, coro

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, meter, name = self.coro, self.meter, self.name
        method, arg, first = coro.send, None, True
        while True:
            try:
                yielded = meter.run(name, method, (arg,), None, first)
                first = False
            except StopIteration as stop:
                return stop.value
            try:
                arg = yield yielded
                method = coro.send
            except BaseException as exc:  # thrown in (cancellation): forward it
                method, arg = coro.throw, exc


def patch(meter: Meter) -> None:
    for module_name, path, name in COMPONENTS:
        module = importlib.import_module(module_name)
        owner: Any = module
        *outer, attribute = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = inspect.getattr_static(owner, attribute)
        if isinstance(original, staticmethod):
            setattr(owner, attribute, staticmethod(meter.wrap(name, original.__func__)))
        else:
            setattr(owner, attribute, meter.wrap(name, original))
    globals()["bare"] = ins.bare  # the patched one, for the gateway's upstream


async def drive(config: ins.Config, workdir: Path, warmup: int, requests: int, meter: Any) -> None:
    from surefoot.testing import ManualClock

    clock = ManualClock()
    stack = config.build(workdir, clock)
    app = stack.app if meter is None else meter.wrap(ROOT, stack.app)
    if meter is not None and not inspect.iscoroutinefunction(stack.app):

        async def rooted(scope: Any, receive: Any, send: Any) -> None:
            await stack.app(scope, receive, send)

        app = meter.wrap(ROOT, rooted)
    try:
        for i in range(warmup + requests):
            clock.advance(ins.CLOCK_STEP)
            status, headers, body = await ins.send_one(app, stack.request(i))
            ins.check(config, stack, status, headers, body, i >= warmup)
    finally:
        if stack.close is not None:
            await stack.close()


def calibration_child(args: argparse.Namespace) -> int:
    """``--child calibrate:sync`` or ``calibrate:async``: no-op calls, wrapped with --meter."""
    kind = args.child.split(":")[1]

    def noop(x: int) -> int:
        return x

    async def anoop(x: int) -> int:
        return x

    fn: Any = noop if kind == "sync" else anoop
    if args.meter:
        sys.path.insert(0, args.meter)
        import _sfmeter  # type: ignore[import-not-found]

        fn = Meter(_sfmeter.call).wrap("calibration", fn)
    total = args.warmup + args.requests
    if kind == "sync":
        for i in range(total):
            fn(i)
        return 0

    async def main() -> None:
        for i in range(total):
            await fn(i)

    asyncio.run(main())
    return 0


def child(args: argparse.Namespace) -> int:
    meter = None
    if args.meter:
        sys.path.insert(0, args.meter)
        import _sfmeter

        meter = Meter(_sfmeter.call)
        patch(meter)
    config = ins.BY_NAME[args.child]
    asyncio.run(drive(config, Path(args.workdir), args.warmup, args.requests, meter))
    if meter is not None:
        slots = {
            str(i): [*pair, meter.calls[i], meter.starts[i]] for pair, i in meter.slots.items()
        }
        Path(args.workdir, "slots.json").write_text(json.dumps(slots))
    return 0


# -- the child: decisions ---------------------------------------------------------------------

DECISION_PIECES = ("loop", "floor", "acquire_now", "decide", "decision_tuple", "lock", "odict")
DECISION_MEANING = {
    "floor": "the floor: FloorTokenBucket.hit",
    "acquire_now": "MemoryStore.acquire_now, the whole decision",
    "decide": "ALGORITHM.decide alone, state in a plain dict",
    "decision_tuple": "building the RateLimitDecision (as decide does)",
    "lock": "with store._lock: (uncontended)",
    "odict": "OrderedDict get, set, move_to_end (as acquire_now)",
}


def decision_child(args: argparse.Namespace) -> int:
    """Run ``--requests`` calls of one piece (``--child decision:ALGORITHM:PIECE``)."""
    from collections import OrderedDict

    import ratelimit_decisions as rd

    from surefoot.ratelimit import Item, Limit
    from surefoot.ratelimit._algorithms import ALGORITHM_BY_NAME, _decision
    from surefoot.storage import MemoryStore

    _, algorithm, piece = args.child.split(":")
    keys = [f"user-{i:06d}" for i in range(1000)]
    amount, window = 1_000_000, 60.0
    limit = Limit(amount, window, algorithm=algorithm)
    store = MemoryStore(max_counters=1_000_000)
    items = [(Item(k, algorithm, limit, 1, True, ""),) for k in keys]
    floor = rd.FloorTokenBucket(amount / window, float(amount))
    decide = ALGORITHM_BY_NAME[algorithm].decide
    states: dict[str, Any] = {}
    now = 1_000_000.0
    total = args.warmup + args.requests
    if piece == "loop":
        for i in range(total):
            _ = keys[i % 1000], now + i * 1e-6
    elif piece == "floor":
        hit = floor.hit
        for i in range(total):
            hit(keys[i % 1000], now + i * 1e-6)
    elif piece == "acquire_now":
        acquire = store.acquire_now
        for i in range(total):
            _ = keys[i % 1000]
            acquire(items[i % 1000], now + i * 1e-6)
    elif piece == "decide":  # the pure decision and its state, in a plain dict
        for i in range(total):
            key = keys[i % 1000]
            decision, new = decide(states.get(key), now + i * 1e-6, 1, limit)
            if decision.allowed:
                states[key] = new
    elif piece == "decision_tuple":  # building one RateLimitDecision, as decide does
        fields = tuple(decide(None, now, 1, limit)[0])
        for i in range(total):
            _ = keys[i % 1000], now + i * 1e-6
            _decision(fields)
    elif piece == "lock":
        lock = store._lock
        for i in range(total):
            _ = keys[i % 1000], now + i * 1e-6
            with lock:
                pass
    elif piece == "odict":
        counters: OrderedDict[str, Any] = OrderedDict((k, (0.0, now)) for k in keys)
        for i in range(total):
            key, t = keys[i % 1000], now + i * 1e-6
            state = counters.get(key)
            counters[key] = (1.0, t)
            if state is not None:
                counters.move_to_end(key)
    else:
        raise h.BenchError(f"unknown piece {piece!r}")
    return 0


# -- garbage collection under new keys --------------------------------------------------------


def gc_run(which: str, keys: int, freeze: bool) -> dict[str, Any]:
    """``keys`` POSTs with new keys through ``bench/_idempotency_app.py``'s ``which``
    (``surefoot`` on ``memory://?on_full=evict``, or ``floor``), prefilled with 10,000
    records as the wrk benchmark is; every collection timed with ``gc.callbacks``."""
    import gc
    import time

    import _idempotency_app as app_module

    protected = (
        app_module.surefoot("memory://?on_full=evict")
        if which == "surefoot"
        else app_module.floor("memory", "gc")
    )
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]
    collected = [0]  # collections so far, to tell whether a slow request met one

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])
            collected[0] += 1

    async def run() -> dict[str, Any]:
        for i in range(10_000):
            await protected.write(i)
        gc.collect()
        before = len(gc.get_objects())
        if freeze:
            gc.freeze()
        gc.callbacks.append(timer)
        latencies = []
        slow = slow_gc = 0  # requests over 1 ms, and those of them during a collection
        try:
            for i in range(keys):
                request = ins.post(f"gc-{i:09d}", b'{"amount":%d,"currency":"eur"}' % (i + 1))
                seen = collected[0]
                t0 = time.perf_counter()
                status, _, _ = await ins.send_one(protected.app, request)
                latencies.append(time.perf_counter() - t0)
                if latencies[-1] > 0.001:
                    slow += 1
                    slow_gc += collected[0] != seen
                if status != 201:
                    raise h.BenchError(f"gc: status {status}")
        finally:
            gc.callbacks.remove(timer)
            if freeze:
                gc.unfreeze()
        after = len(gc.get_objects())
        latencies.sort()
        return {
            "tracked_before": before,
            "tracked_after": after,
            "p50_us": latencies[len(latencies) // 2] * 1e6,
            "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
            "max_us": latencies[-1] * 1e6,
            "mean_us": sum(latencies) / len(latencies) * 1e6,
            "over_1ms": slow,
            "over_1ms_with_gc": slow_gc,
        }

    figures = asyncio.run(run())
    for gen, times in pauses.items():
        figures[f"gen{gen}"] = {
            "collections": len(times),
            "total_ms": sum(times) * 1e3,
            "max_ms": max(times, default=0.0) * 1e3,
        }
    return figures


def gc_report(keys: int) -> dict[str, Any]:
    import gc

    out: dict[str, Any] = {"thresholds": gc.get_threshold()}
    print(f"\n{keys:,} new keys in process (store prefilled with 10,000), gc {gc.get_threshold()}")
    print(f"  {'run':<22} {'tracked':>9} {'p50 us':>7} {'p99 us':>7} {'max us':>8}  "
          ">1 ms (of them during a collection); collections gen0/gen1/gen2, "
          "gen2 total and max ms")  # fmt: skip
    for which, freeze in (("floor", False), ("surefoot", False), ("surefoot", True)):
        # a fresh interpreter for each, so that none inherits the other's objects
        done = subprocess.run(
            [sys.executable, __file__, "--child", f"gc:{which}:{int(freeze)}",
             "--requests", str(keys)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise h.BenchError(f"gc {which}: {done.stderr[-2000:]}")
        f = json.loads(done.stdout)
        name = f"{which}{' + gc.freeze()' if freeze else ''}"
        out[name] = f
        print(
            f"  {name:<22} {f['tracked_after']:>9,} {f['p50_us']:>7,.0f} {f['p99_us']:>7,.0f} "
            f"{f['max_us']:>8,.0f}  {f['over_1ms']} ({f['over_1ms_with_gc']}); "
            f"{f['gen0']['collections']}/{f['gen1']['collections']}/"
            f"{f['gen2']['collections']}, {f['gen2']['total_ms']:,.0f} ms, "
            f"max {f['gen2']['max_ms']:,.1f} ms"
        )
    return out


# -- the parent -------------------------------------------------------------------------------

INCLUSIVE = re.compile(r"^\s*([\d,]+)\s.*\bsf_slot_(\d+)\b", re.MULTILINE)


def callgrind(child_args: list[str], workdir: Path, tag: str) -> tuple[int, Path]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=workdir))
    out = run_dir / "callgrind.out"
    command = [
        shutil.which(ins.VALGRIND) or ins.VALGRIND, "--tool=callgrind",
        f"--callgrind-out-file={out}", sys.executable, __file__, *child_args,
        "--workdir", str(run_dir),
    ]  # fmt: skip
    env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise h.BenchError(f"{tag}: the child failed:\n{done.stderr[-3000:]}")
    found = ins.COLLECTED.search(done.stderr)
    if found is None:
        raise h.BenchError(f"{tag}: no instruction count from callgrind")
    return int(found.group(1)), run_dir


def slot_costs(run_dir: Path) -> dict[tuple[str, str], tuple[int, int, int]]:
    """Inclusive Ir, calls (or steps) and coroutine starts of every (parent, component)
    slot of a metered run."""
    annotate = shutil.which("callgrind_annotate") or "callgrind_annotate"
    text = subprocess.run(
        [annotate, "--inclusive=yes", "--threshold=100", str(run_dir / "callgrind.out")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    names = json.loads((run_dir / "slots.json").read_text())
    costs: dict[tuple[str, str], tuple[int, int, int]] = {}
    for ir, slot in INCLUSIVE.findall(text):
        if slot in names:
            parent, name, calls, starts = names[slot]
            costs[(parent, name)] = (int(ir.replace(",", "")), calls, starts)
    return costs


def calibrate(args: argparse.Namespace, workdir: Path, meter: Path) -> dict[str, float]:
    """Instructions a wrapper adds to one sync call and to one awaited coroutine."""
    out: dict[str, float] = {}
    small, large = 2_000, 6_000
    for kind in ("sync", "async"):
        slopes = []
        for metered in (False, True):
            counts = []
            for n in (small, large):
                child_args = [
                    "--child",
                    f"calibrate:{kind}",
                    "--requests",
                    str(n),
                    "--warmup",
                    "100",
                ]
                if metered:
                    child_args += ["--meter", str(meter)]
                counts.append(callgrind(child_args, workdir, f"calibrate-{kind}-{n}")[0])
            slopes.append((counts[1] - counts[0]) / (large - small))
        out[kind] = slopes[1] - slopes[0]
    print(f"  a wrapper adds {out['sync']:,.0f} instructions to a sync call, "
          f"{out['async']:,.0f} to an awaited coroutine", flush=True)  # fmt: skip
    return out


def profile(config: str, args: argparse.Namespace, workdir: Path, meter: Path) -> dict[str, Any]:
    def run(requests: int, metered: bool) -> tuple[int, Path]:
        child_args = ["--child", config, "--requests", str(requests), "--warmup", str(args.warmup)]
        if metered:
            child_args += ["--meter", str(meter)]
        return callgrind(child_args, workdir, f"{config}-{requests}-{int(metered)}")

    span = args.large - args.small
    plain = (run(args.large, False)[0] - run(args.small, False)[0]) / span
    small, small_dir = run(args.small, True)
    large, large_dir = run(args.large, True)
    few, many = slot_costs(small_dir), slot_costs(large_dir)
    zero = (0, 0, 0)
    per = {
        pair: [(many[pair][i] - few.get(pair, zero)[i]) / span for i in range(3)] for pair in many
    }
    metered = (large - small) / span
    print(f"  {config}: {plain:,.0f} instructions per request ({metered:,.0f} metered)", flush=True)
    return {"config": config, "plain": plain, "metered": metered, "per": per}


def corrected(result: dict[str, Any], cost: dict[str, float]) -> dict[tuple[str, str], float]:
    """Inclusive Ir per slot, less the wrappers' own cost of the slot's descendants.

    The wrapper of a child runs in its parent's slot: a sync call costs ``cost['sync']``,
    a coroutine ``cost['async']`` plus ``cost['sync']`` per further step (an estimate).
    """
    per: dict[tuple[str, str], list[float]] = result["per"]

    def wrapping(pair: tuple[str, str]) -> float:
        _, calls, starts = per[pair]
        if starts:
            return starts * cost["async"] + (calls - starts) * cost["sync"]
        return calls * cost["sync"]

    children: dict[str, list[tuple[str, str]]] = {}
    for pair in per:
        children.setdefault(pair[0], []).append(pair)

    def descendants_wrapping(name: str) -> float:
        return sum(wrapping(c) + descendants_wrapping(c[1]) for c in children.get(name, []))

    return {pair: per[pair][0] - descendants_wrapping(pair[1]) for pair in per}


def components(result: dict[str, Any]) -> list[tuple[int, str, float, float]]:
    """(depth, component, inclusive, self) rows, children under their parent."""
    inclusive: dict[tuple[str, str], float] = result["inclusive"]
    children: dict[str, list[tuple[str, float]]] = {}
    for (parent, name), ir in inclusive.items():
        children.setdefault(parent, []).append((name, ir))
    rows: list[tuple[int, str, float, float]] = []

    def walk(parent: str, depth: int) -> None:
        for name, ir in sorted(children.get(parent, []), key=lambda c: -c[1]):
            own = ir - sum(c for _, c in children.get(name, []))
            rows.append((depth, name, ir, own))
            walk(name, depth + 1)

    walk("", 0)
    return rows


def flat(result: dict[str, Any]) -> dict[str, float]:
    """Each component's own instructions, summed over its parents, plus the rest."""
    totals: dict[str, float] = {}
    for _, name, _, own in components(result):
        totals[name] = totals.get(name, 0.0) + own
    top = sum(ir for (parent, _), ir in result["inclusive"].items() if parent == "")
    totals[OUTSIDE] = result["plain"] - top
    return totals


def print_profile(result: dict[str, Any], bare_plain: float | None, tree: bool) -> None:
    plain, metered = result["plain"], result["metered"]
    print()
    print(f"{result['config']}: {plain:,.0f} instructions per request unmetered", end="")
    if bare_plain is not None:
        print(f" (bare {bare_plain:,.0f}, +{plain - bare_plain:,.0f})", end="")
    print(f"; {metered:,.0f} metered (the wrappers add {metered - plain:,.0f}, taken out below)")
    if tree:
        print(f"  {'component':<52} {'inclusive':>10} {'self':>10}")
        for depth, name, ir, own in components(result):
            if abs(ir) < 50:  # a component this request never reached
                continue
            print(f"  {'  ' * depth + name:<52} {ir:>10,.0f} {own:>10,.0f}")
    print(f"  {'component (self, all parents)':<44} {'instr/req':>10} {'share':>6}")
    for name, own in sorted(flat(result).items(), key=lambda kv: -kv[1]):
        if abs(own) < 50:
            continue
        print(f"  {name:<44} {own:>10,.0f} {own / plain:>6.1%}")


def decisions(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    span = args.large_decisions - args.small_decisions
    for algorithm in args.decisions:
        figures: dict[str, float] = {}
        for piece in DECISION_PIECES:
            counts = [
                callgrind(
                    ["--child", f"decision:{algorithm}:{piece}", "--requests", str(n),
                     "--warmup", "2000"],
                    workdir, f"{algorithm}-{piece}-{n}",
                )[0]
                for n in (args.small_decisions, args.large_decisions)
            ]  # fmt: skip
            figures[piece] = (counts[1] - counts[0]) / span
        out[algorithm] = figures
        loop = figures["loop"]
        print(f"\n{algorithm}: instructions per call (the loop's own {loop:,.0f} subtracted)")
        floor = figures["floor"] - loop
        for piece in DECISION_PIECES[1:]:
            own = figures[piece] - loop
            print(
                f"  {piece:<16} {own:>8,.0f}  {own / floor:5.2f}x floor  {DECISION_MEANING[piece]}"
            )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = h.new_parser(__doc__, quick={"small": 20, "large": 120, "warmup": 20})
    h.option(parser, "--small", 50, "requests counted in the smaller run")
    h.option(parser, "--large", 250, "requests counted in the larger run")
    h.option(parser, "--warmup", 50, "requests sent before the counted ones, in every run")
    h.option(parser, "--jobs", 2, "children run under valgrind at once")
    h.option(parser, "--decisions", "", "algorithms whose decision to split (e.g. token_bucket)")
    h.option(parser, "--small-decisions", 10_000, "decisions in the smaller run")
    h.option(parser, "--large-decisions", 30_000, "decisions in the larger run")
    h.option(parser, "--gc", 0, "new keys through the memory store, collections timed (0: skip)")
    parser.add_argument("--tree", action="store_true", help="print the component tree too")
    parser.add_argument(
        "--configs",
        default="ratelimit-memory,idempotency-memory-new,idempotency-memory-replay,"
        "idempotency-sqlite-new,idempotency-sqlite-replay,gateway-no-policy,"
        "gateway-sqlite-post-new",
        help="bench/instructions.py configurations to split ('none': only --decisions)",
    )
    h.add_output_options(parser, check=False)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--meter", default="", help=argparse.SUPPRESS)
    args = h.parse(parser, argv)
    args.decisions = [a for a in str(args.decisions).split(",") if a]
    args.configs = [] if args.configs == "none" else args.configs.split(",")
    unknown = [c for c in args.configs if c not in ins.BY_NAME]
    if unknown:
        parser.error(f"unknown configurations: {unknown}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        if args.child.startswith("decision:"):
            return decision_child(args)
        if args.child.startswith("calibrate:"):
            return calibration_child(args)
        if args.child.startswith("gc:"):
            _, which, freeze = args.child.split(":")
            print(json.dumps(gc_run(which, args.requests, freeze == "1")))
            return 0
        return child(args)
    gc_figures = gc_report(args.gc) if args.gc else {}
    if not args.configs and not args.decisions:
        if args.json:
            h.write_json(args.json, {"command": h.command_line(argv), "gc": gc_figures})
        return 0
    h.require_executable(ins.VALGRIND)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sfbench-components-") as tmp:
        workdir = Path(tmp)
        build_meter(workdir)
        configs = ["bare", *[c for c in args.configs if c != "bare"]] if args.configs else []
        cost = calibrate(args, workdir, workdir) if configs else {}
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda c: profile(c, args, workdir, workdir), configs))
        for result in results:
            result["inclusive"] = corrected(result, cost)
            result["calibration"] = cost
        split = decisions(args, workdir) if args.decisions else {}
    bare_plain = results[0]["plain"] if results else None
    for result in results[1:]:
        print_profile(result, bare_plain, args.tree)
    if results:
        print(f"\nbare: {OUTSIDE}: {flat(results[0])[OUTSIDE]:,.0f} instructions per request")
    if args.json:
        document = {
            "command": h.command_line(argv),
            "stacks": [
                {
                    "config": r["config"],
                    "plain": r["plain"],
                    "metered": r["metered"],
                    "tree": [
                        {"depth": d, "component": n, "inclusive": i, "self": s}
                        for d, n, i, s in components(r)
                    ],
                    "flat": flat(r),
                }
                for r in results
            ],
            "decisions": split,
            "gc": gc_figures,
        }
        h.write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(h.run(main))
