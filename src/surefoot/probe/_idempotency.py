"""The idempotency checks of ``surefoot probe``: does the partner deduplicate a key?

Each check sends a few writes to one target through the ``ProbeClient`` and concludes one
``Finding``; what it concludes is decided by a pure ``judge_*`` function (table-tested), the
sending is the check's.

=================  ==============================================================  ===========
check              what is sent                                                    pass when
=================  ==============================================================  ===========
``replay``         one body, one key, twice in sequence                            same status
                                                                                   and body,
                                                                                   one effect
``lost_response``  one body, one key: the first answer cut by the probe, then      one effect,
                   the same request again                                          a 2xx answer
``concurrent``     ``target.concurrency`` copies, one key, all at once             one effect
``mismatch``       one key, then another body with the same key                    refused
``no_key``         one write without the key header                                refused
``key_lifetime``   one key, then ``client.wait(target.key_lifetime)``, then again  as ``replay``
=================  ==============================================================  ===========

Rule 1: effects are counted as a difference: the effect check runs before and after the
        writes, so what other runs (or other checks) created is not counted. A count the
        probe cannot read (an error, a non-2xx answer, no such field) is None, and so is
        the difference.
Rule 2: a judge never guesses what only the effect can tell. Without an effect count
        (``target.effect`` is None, or it could not be read) identical answers end
        ``inconclusive`` unless the second one says it was replayed
        (``Idempotent-Replayed``/``Idempotency-Replayed: true``); answers that differ, or a
        refusal, are judged from the answers alone, and the summary says so.
Rule 3: a body is rendered once per request number and the same text is sent for every
        copy, so ``{{uuid}}`` in a body template never makes a replay look like a mismatch.
        Keys are fresh UUIDs (``{{uuid}}``), never reused across checks or runs. ``{{n}}``
        is fixed per check (``replay`` 1, ``lost_response`` 11, ``concurrent`` 21,
        ``mismatch`` 31 then 32 for the other body, ``no_key`` 41, ``key_lifetime`` 51).
Rule 4: every loop is bounded. A sequential re-send that meets ``409`` (the first request
        may still be settling) is sent again at most ``SETTLE_ATTEMPTS`` times, waiting
        ``SETTLE_WAIT`` seconds through ``client.wait``. A check raises
        ``BudgetExhausted`` before its first request when the client's remaining requests
        cannot cover its worst case, so it never leaves half its writes behind.
Rule 5: a first answer that is not 2xx (the body or headers of the target are wrong, the
        partner fails) makes a check ``inconclusive``: nothing can be said about a replay
        of a request that did not succeed. For ``lost_response`` the first answer must be
        a real cut (``_client.CUT_ERROR``) of a 2xx (``Exchange.cut_status``): a request
        that never reached the partner, a cut 500, or an answer the probe could not cut
        tests no lost answer.
Rule 6: "refused" means refused for the key: ``400``, ``409``, ``422`` or ``428``
        (``KEY_REFUSALS``). Another 4xx (``429`` rate limited, ``401``/``403``
        credentials, ``404``...) refused the request for another reason and says nothing
        about the key: ``mismatch`` and ``no_key`` end ``inconclusive`` (``fail`` if an
        effect was counted anyway), and ``concurrent`` does not count such copies as
        deduplicated.
Rule 7: effects are counted only once every copy has answered: a ``concurrent`` copy
        without an answer (a timeout, a reset) may still be running, so unless more than
        one effect is counted already the check ends ``inconclusive``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from surefoot.probe._client import CUT_ERROR
from surefoot.probe._model import (
    BudgetExhausted,
    Effect,
    Exchange,
    Finding,
    ProbeClient,
    Target,
    Verdict,
)

__all__ = [
    "IDEMPOTENCY_CHECKS",
    "KEY_REFUSALS",
    "SETTLE_ATTEMPTS",
    "SETTLE_WAIT",
    "Check",
    "count_from",
    "effect_count",
    "judge_concurrent",
    "judge_key_lifetime",
    "judge_lost_response",
    "judge_mismatch",
    "judge_no_key",
    "judge_replay",
    "same_body",
]

#: A check: ``(client, target, run id) -> Finding``.
Check = Callable[[ProbeClient, Target, str], Awaitable[Finding]]
#: A judge's conclusion: the verdict, the summary (what happened), the advice.
Judgement = tuple[Verdict, str, str]

#: Re-sends of a request answered 409 while its key may still be settling (Rule 4).
SETTLE_ATTEMPTS = 3
#: Seconds waited before each of those re-sends.
SETTLE_WAIT = 0.5

#: The statuses that refuse a request for its key (Rule 6): malformed or missing (400,
#: 428), in flight or reused (409), reused for another request (422).
KEY_REFUSALS = frozenset({400, 409, 422, 428})

#: Request numbers (``{{n}}``) of each check, so the bodies of two checks differ.
_N = {
    "replay": 1,
    "lost_response": 11,
    "concurrent": 21,
    "mismatch": 31,
    "no_key": 41,
    "key_lifetime": 51,
}
_REPLAY_HEADERS = ("idempotent-replayed", "idempotency-replayed", "x-idempotent-replayed")

_NO_DEDUP = (
    "this endpoint does not deduplicate: never retry it automatically; "
    "reconcile via the list endpoint (the effect check) before sending it again."
)
_NO_EFFECT = (
    "add an effect check to the target (a request that counts what a call created), "
    "so the probe can see side effects and not only answers."
)


# -- counting effects (pure) ------------------------------------------------------------------


def count_from(spec: str, exchange: Exchange) -> int | None:
    """The count ``exchange`` shows, read as ``spec`` says (``_model.Effect.count``), or
    None if it cannot be read: no answer, a non-2xx answer (but 404 for ``status``), no such
    field or header, or not a whole number."""
    status = exchange.status
    if status is None:
        return None
    if spec == "status":
        if 200 <= status < 300:
            return 1
        return 0 if status == 404 else None
    if not 200 <= status < 300:
        return None
    kind, _, where = spec.partition(":")
    if kind == "header":
        value = exchange.header(where)
        return _whole(value.strip()) if value is not None else None
    if kind == "json":
        try:
            found: Any = json.loads(exchange.response_body)
        except ValueError:
            return None
        for part in where.split(".") if where else ():
            if isinstance(found, dict) and part in found:
                found = found[part]
            elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
                found = found[int(part)]
            else:
                return None
        if isinstance(found, list):
            return len(found)
        if isinstance(found, int) and not isinstance(found, bool) and found >= 0:
            return found
        return _whole(found) if isinstance(found, str) else None
    return None


def _whole(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _difference(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


# -- comparing answers (pure) -----------------------------------------------------------------


def same_body(first: Exchange, second: Exchange) -> bool:
    """The two answers' bodies are equal: as JSON values when both parse, else as text."""
    try:
        return bool(json.loads(first.response_body) == json.loads(second.response_body))
    except ValueError:
        return first.response_body == second.response_body


def _says_replayed(exchange: Exchange) -> bool:
    return any((exchange.header(name) or "").strip().lower() == "true" for name in _REPLAY_HEADERS)


def _ok(exchange: Exchange) -> bool:
    return exchange.status is not None and 200 <= exchange.status < 300


def _refused(exchange: Exchange) -> bool:
    """Refused for its key (Rule 6)."""
    return exchange.status in KEY_REFUSALS


def _refused_otherwise(exchange: Exchange) -> bool:
    """A 4xx that is no refusal for the key: rate limited, credentials, not found (Rule 6)."""
    status = exchange.status
    return status is not None and 400 <= status < 500 and status not in KEY_REFUSALS


def _other_reason(status: int | None) -> str:
    if status == 429:
        return "rate limited"
    if status in (401, 403):
        return "credentials refused"
    return "refused for another reason than the key"


def _not_for_the_key(what: str, exchange: Exchange) -> Judgement:
    """Rule 6: a 4xx that says nothing about the key."""
    return (
        Verdict.INCONCLUSIVE,
        f"{what} got {exchange.status} ({_other_reason(exchange.status)}): not a refusal "
        "for the key (400, 409, 422 or 428), so it says nothing about the key.",
        "run the probe again once the partner admits the request (mind its rate limit, "
        "check the target's credentials and URL).",
    )


def _shown(exchange: Exchange) -> str:
    if exchange.status is None:
        return f"no answer ({exchange.error or 'unknown error'})"
    return str(exchange.status)


def _unusable_first(first: Exchange) -> Judgement | None:
    """Rule 5: the first request did not succeed, so nothing can be judged."""
    if _ok(first):
        return None
    return (
        Verdict.INCONCLUSIVE,
        f"the first request got {_shown(first)}, not a 2xx: nothing to replay.",
        "fix the target (its body, headers or credentials) so that one request succeeds, "
        "then run the probe again.",
    )


def _not_lost(first: Exchange) -> Judgement | None:
    """Rule 5: only a real cut of a 2xx answer is a lost answer."""
    cut = first.error == CUT_ERROR
    if cut and first.cut_status is not None and 200 <= first.cut_status < 300:
        return None
    if first.status is not None:
        return _unusable_first(first) or (
            Verdict.INCONCLUSIVE,
            f"the probe could not cut the first answer ({first.status} came through): "
            "nothing was lost, so the retry tests a replay, not a lost answer.",
            "run the probe again; the replay check judges what this run saw.",
        )
    if not cut:
        return (
            Verdict.INCONCLUSIVE,
            f"the first request was not cut: it got {_shown(first)}, so the retry tests "
            "no lost answer.",
            "run the probe again; if it persists, check the partner's health.",
        )
    if first.cut_status is None:
        return (
            Verdict.INCONCLUSIVE,
            "the probe cut the first answer without its status: nothing tells that the "
            "partner executed the first request.",
            "run the probe again.",
        )
    return (
        Verdict.INCONCLUSIVE,
        f"the partner answered the first request {first.cut_status} before the probe "
        "dropped it, not a 2xx: there is no success to replay.",
        "fix the target (its body, headers or credentials) so that one request succeeds, "
        "then run the probe again.",
    )


def _zero_effects(what: str) -> Judgement:
    return (
        Verdict.INCONCLUSIVE,
        f"{what}, but the effect check counted no new effect: it does not see these writes.",
        "fix the effect check so that it counts what one request of this target creates "
        "(e.g. list by the customer or reference the body carries).",
    )


# -- the judges (pure) ------------------------------------------------------------------------


def judge_replay(first: Exchange, second: Exchange, effects: int | None) -> Judgement:
    """Same key twice in sequence: same status and body, and one effect."""
    unusable = _unusable_first(first)
    if unusable is not None:
        return unusable
    if second.status is None:
        return (
            Verdict.INCONCLUSIVE,
            f"the second request got {_shown(second)}.",
            "run the probe again; if it persists, check the partner's health.",
        )
    answered = f"answered {first.status} then {second.status}"
    if effects is not None and effects > 1:
        return (
            Verdict.FAIL,
            f"the same key sent twice created {effects} effects ({answered}).",
            _NO_DEDUP,
        )
    if effects == 0:
        return _zero_effects(answered)
    if second.status != first.status or not same_body(first, second):
        why = "a different status" if second.status != first.status else "a different body"
        effect = "" if effects is None else f", {effects} effect"
        return (
            Verdict.FAIL,
            f"the same key sent twice {answered}, with {why}{effect}: the first answer "
            "was not replayed.",
            "a retry cannot learn the outcome from the answer: never retry automatically; "
            "after a lost answer, read the outcome back (the effect check) before re-sending."
            if effects is not None
            else _NO_DEDUP,
        )
    if effects == 1:
        return (
            Verdict.PASS,
            f"the same key sent twice got the same answer ({first.status}) and made one effect.",
            "a retry with the same key is safe: send every retry of one operation with its key.",
        )
    if _says_replayed(second):
        return (
            Verdict.PASS,
            f"the same key sent twice got the same answer ({first.status}), the second "
            "marked as replayed; judged from the answers only (no effect count).",
            "a retry with the same key looks safe; " + _NO_EFFECT,
        )
    return (
        Verdict.INCONCLUSIVE,
        f"the same key sent twice got the same answer ({first.status}), but without an "
        "effect count only the effect can tell whether it was executed twice.",
        _NO_EFFECT,
    )


def judge_lost_response(first: Exchange, second: Exchange, effects: int | None) -> Judgement:
    """Same key after the first answer was lost: one effect, and the retry gets an outcome.

    ``first`` must be a real cut of a 2xx answer, else ``inconclusive`` (Rule 5)."""
    unusable = _not_lost(first)
    if unusable is not None:
        return unusable
    if second.status is None:
        return (
            Verdict.INCONCLUSIVE,
            f"the retry after the lost answer got {_shown(second)}.",
            "run the probe again; if it persists, check the partner's health.",
        )
    if effects is not None and effects > 1:
        return (
            Verdict.FAIL,
            f"the retry after a lost answer executed again: {effects} effects "
            f"(the retry answered {second.status}).",
            "a lost answer is not safe to retry: never retry POST automatically; after a "
            "timeout, look the outcome up (the effect check) before sending it again.",
        )
    if effects == 0:
        return _zero_effects(f"the retry answered {second.status}")
    if not _ok(second):
        effect = "" if effects is None else f" ({effects} effect)"
        return (
            Verdict.FAIL,
            f"the retry after a lost answer got {second.status}{effect}: the first "
            "request's outcome cannot be learned by retrying with its key.",
            "after a lost answer, look the outcome up (the effect check) instead of "
            "retrying; never treat this answer as the outcome.",
        )
    if effects == 1:
        return (
            Verdict.PASS,
            f"the retry after a lost answer got {second.status} and there is one effect.",
            "retrying after a timeout or a reset is safe with the same key.",
        )
    if _says_replayed(second):
        return (
            Verdict.PASS,
            f"the retry after a lost answer got {second.status}, marked as replayed; "
            "judged from the answer only (no effect count).",
            "retrying after a lost answer looks safe with the same key; " + _NO_EFFECT,
        )
    return (
        Verdict.INCONCLUSIVE,
        f"the retry after a lost answer got {second.status}, but without an effect count "
        "only the effect can tell whether the request was executed twice.",
        _NO_EFFECT,
    )


def _statuses(exchanges: Sequence[Exchange]) -> str:
    counts = Counter(_shown(e) for e in exchanges)
    return ", ".join(f"{n} x {status}" for status, n in sorted(counts.items()))


def judge_concurrent(exchanges: Sequence[Exchange], effects: int | None) -> Judgement:
    """``len(exchanges)`` copies with one key at once: one effect.

    A copy without an answer may still be running: unless more than one effect is counted
    already, that is ``inconclusive`` (Rule 7). Copies refused for another reason than the
    key (Rule 6) are no duplicates that reached the key's handling."""
    answered = f"{len(exchanges)} concurrent requests with one key got {_statuses(exchanges)}"
    successes = [e for e in exchanges if _ok(e)]
    if effects is not None and effects > 1:
        return (
            Verdict.FAIL,
            f"{answered}, and made {effects} effects: duplicates in flight are executed.",
            "never send a second attempt while the first may still be running (no hedged "
            "or parallel retries), and serialise requests per key on your side; "
            "reconcile via the list endpoint.",
        )
    unanswered = sum(1 for e in exchanges if e.status is None)
    if unanswered:
        counted = "" if effects is None else f" ({effects} so far)"
        return (
            Verdict.INCONCLUSIVE,
            f"{answered}: {unanswered} got no answer and may still be running, so the "
            f"effects cannot be counted yet{counted}.",
            "give the probe a timeout longer than the partner holds a duplicate, then run it "
            "again; meanwhile treat a request without an answer as possibly executed.",
        )
    if not successes:
        return (
            Verdict.INCONCLUSIVE,
            f"{answered}: none succeeded.",
            "fix the target so that one request succeeds, then run the probe again.",
        )
    if effects == 0:
        return _zero_effects(answered)
    untested = [e for e in exchanges if _refused_otherwise(e)]
    if len(exchanges) - len(untested) < 2:
        why = ", ".join(sorted({_other_reason(e.status) for e in untested}))
        return (
            Verdict.INCONCLUSIVE,
            f"{answered}: the others were refused for another reason than the key ({why}), "
            "so no duplicate reached the key's handling.",
            "lower concurrency below the partner's rate limit (or check the target's "
            "credentials), then run the probe again.",
        )
    others = len(exchanges) - len(successes)
    what_others_get = (
        f"the others got {_statuses([e for e in exchanges if not _ok(e)])}: retry those "
        "with the same key (after a short wait) to learn the outcome."
        if others
        else "the others waited and got the same answer."
    )
    if effects == 1:
        return (
            Verdict.PASS,
            f"{answered}, and made one effect.",
            "duplicates in flight are deduplicated; " + what_others_get,
        )
    distinct = [
        e for i, e in enumerate(successes) if not any(same_body(e, s) for s in successes[:i])
    ]
    if len(distinct) > 1:
        return (
            Verdict.FAIL,
            f"{answered}, with {len(distinct)} different successful answers (judged from "
            "the answers only: no effect count).",
            "never send a second attempt while the first may still be running; " + _NO_EFFECT,
        )
    first = next(i for i, e in enumerate(exchanges) if _ok(e))
    rest = [e for i, e in enumerate(exchanges) if i != first and not _refused_otherwise(e)]
    if all(_refused(e) or _says_replayed(e) for e in rest):
        return (
            Verdict.PASS,
            f"{answered}: one succeeded, the others were refused or replayed (judged from "
            "the answers only: no effect count).",
            "duplicates in flight look deduplicated; " + _NO_EFFECT,
        )
    return (
        Verdict.INCONCLUSIVE,
        f"{answered}, the same answer each time, but without an effect count only the "
        "effect can tell how many were executed.",
        _NO_EFFECT,
    )


def judge_mismatch(
    first: Exchange, second: Exchange, first_effects: int | None, second_effects: int | None
) -> Judgement:
    """One key, then another body with it: refused for the key (Rule 6) and nothing done
    for it."""
    unusable = _unusable_first(first)
    if unusable is not None:
        return unusable
    refused = _refused(second) or _refused_otherwise(second)
    if not refused and not _ok(second):
        return (
            Verdict.INCONCLUSIVE,
            f"the other body with the same key got {_shown(second)}.",
            "run the probe again; if it persists, check the partner's health.",
        )
    if refused:
        if second_effects:
            return (
                Verdict.FAIL,
                f"the other body with the same key was refused ({second.status}) but made "
                f"{second_effects} effect(s) anyway.",
                "a refusal is not to be trusted here: never reuse a key for another "
                "request; reconcile via the list endpoint.",
            )
        if _refused_otherwise(second):
            return _not_for_the_key("the other body with the same key", second)
        return (
            Verdict.PASS,
            f"the other body with the same key was refused ({second.status}).",
            "a key is bound to its request: use one fresh key per operation, and treat "
            f"{second.status} as a bug in your client (a key reused for another request).",
        )
    if second_effects is not None and second_effects >= 1:
        return (
            Verdict.FAIL,
            f"the other body with the same key was accepted ({second.status}) and executed "
            f"as a new request ({second_effects} effect(s)): the key is not checked "
            "against the request.",
            _NO_DEDUP,
        )
    replayed = same_body(first, second) and second.status == first.status
    if replayed:
        counted = "" if second_effects is None else ", no effect for it"
        return (
            Verdict.FAIL,
            f"the other body with the same key was accepted ({second.status}): the partner "
            f"replayed the first request's answer{counted}; the changed request was "
            "silently dropped.",
            "never reuse a key for another request: one fresh key per operation, or a "
            "changed request is answered with the old result and never executed.",
        )
    return (
        Verdict.FAIL,
        f"the other body with the same key was accepted ({second.status}) with another "
        "answer (judged from the answers only: no effect count).",
        "the key is not checked against the request: never reuse a key for another "
        "request; " + _NO_EFFECT,
    )


def judge_no_key(exchange: Exchange, effects: int | None) -> Judgement:
    """A write without a key: refused for the key (Rule 6) is ``pass``; accepted is a fact,
    not a failure of the key's handling (``inconclusive``, with the advice to always send a
    key)."""
    if (_refused(exchange) or _refused_otherwise(exchange)) and effects:
        return (
            Verdict.FAIL,
            f"a write without a key was refused ({exchange.status}), yet made {effects} effect(s).",
            "a refusal is not to be trusted here: send a key with every write, and after a "
            "refused write read the outcome back (the effect check) before sending it again.",
        )
    if _refused_otherwise(exchange):
        return _not_for_the_key("a write without a key", exchange)
    if _refused(exchange):
        return (
            Verdict.PASS,
            f"a write without a key was refused ({exchange.status}).",
            "the partner requires a key: send one with every write.",
        )
    if _ok(exchange):
        made = "" if effects is None else f", {effects} effect(s)"
        return (
            Verdict.INCONCLUSIVE,
            f"a write without a key was accepted ({exchange.status}{made}): nothing "
            "protects a client that forgets the key.",
            "always send a key with every write: without one, this partner executes every retry.",
        )
    return (
        Verdict.INCONCLUSIVE,
        f"a write without a key got {_shown(exchange)}.",
        "run the probe again; if it persists, check the partner's health.",
    )


def judge_key_lifetime(
    first: Exchange, second: Exchange, effects: int | None, *, seconds: float
) -> Judgement:
    """``judge_replay`` after ``seconds``: is the key still remembered?"""
    verdict, summary, advice = judge_replay(first, second, effects)
    after = f"after {seconds:g} s, "
    if verdict is Verdict.PASS:
        advice = f"a retry within {seconds:g} s of the first attempt is safe with the same key."
    elif verdict is Verdict.FAIL:
        advice = (
            f"the key is forgotten within {seconds:g} s: never retry an operation later than "
            "that; reconcile via the list endpoint instead."
        )
    return verdict, after + summary, advice


# -- sending ------------------------------------------------------------------------------------


async def _count(
    client: ProbeClient, effect: Effect | None, n: int
) -> tuple[int | None, Exchange | None]:
    if effect is None:
        return None, None
    exchange = await client.send(
        effect.method, client.render(effect.url, n), headers=dict(effect.headers)
    )
    return count_from(effect.count, exchange), exchange


async def effect_count(client: ProbeClient, effect: Effect, n: int) -> int | None:
    """What ``effect`` counts now for request number ``n`` (``{{n}}`` in its URL), or None
    if the answer cannot be read (see ``count_from``)."""
    count, _ = await _count(client, effect, n)
    return count


class _Sender:
    """One check's requests to one target, and the evidence they leave."""

    def __init__(self, client: ProbeClient, target: Target, check: str) -> None:
        self.client = client
        self.target = target
        self.check = check
        self.evidence: list[Exchange] = []

    def need(self, writes: int, effect_reads: int) -> None:
        """Rule 4: refuse to start what the budget cannot finish."""
        needed = writes + (effect_reads if self.target.effect is not None else 0)
        left = self.client.remaining()
        if left < needed:
            raise BudgetExhausted(f"{self.check} needs up to {needed} requests, {left} left")

    def body(self, n: int) -> str | None:
        return None if self.target.body is None else self.client.render(self.target.body, n)

    def key(self, n: int) -> str:
        return self.client.render("{{uuid}}", n)

    def headers(self, key: str | None) -> dict[str, str]:
        wanted = self.target.key_header.lower()
        headers = {k: v for k, v in self.target.headers.items() if k.lower() != wanted}
        if key is not None:
            headers[self.target.key_header] = key
        return headers

    async def count(self, n: int) -> int | None:
        count, exchange = await _count(self.client, self.target.effect, n)
        if exchange is not None:
            self.evidence.append(exchange)
        return count

    async def send(
        self, n: int, body: str | None, key: str | None, *, cut: bool = False
    ) -> Exchange:
        exchange = await self.client.send(
            self.target.method,
            self.client.render(self.target.url, n),
            headers=self.headers(key),
            body=body,
            cut=cut,
        )
        self.evidence.append(exchange)
        return exchange

    async def settled(self, n: int, body: str | None, key: str | None) -> Exchange:
        """Send; while the answer is 409 (the key may still be in flight), wait and re-send,
        at most ``SETTLE_ATTEMPTS`` times (Rule 4)."""
        exchange = await self.send(n, body, key)
        for _ in range(SETTLE_ATTEMPTS):
            if exchange.status != 409:
                break
            await self.client.wait(SETTLE_WAIT)
            exchange = await self.send(n, body, key)
        return exchange

    def finding(self, judgement: Judgement, **facts: Any) -> Finding:
        verdict, summary, advice = judgement
        if self.target.effect is None:
            facts["effect_check"] = None
        else:
            facts["effect_check"] = self.target.effect.count
        return Finding(
            check=self.check,
            target=self.target.name,
            verdict=verdict,
            summary=summary,
            advice=advice,
            evidence=tuple(self.evidence),
            facts=facts,
        )


def _skipped(target: Target, check: str, why: str, advice: str) -> Finding:
    return Finding(
        check=check, target=target.name, verdict=Verdict.SKIPPED, summary=why, advice=advice
    )


def _not_a_write(target: Target, check: str) -> Finding | None:
    if target.writes:
        return None
    return _skipped(
        target,
        check,
        f"{target.method} is not a write: idempotency keys are about writes.",
        "run the idempotency checks on the partner's write endpoints (POST, PATCH...).",
    )


_WORST_SETTLE = 1 + SETTLE_ATTEMPTS


async def replay(client: ProbeClient, target: Target, run: str) -> Finding:
    """Same key twice in sequence: same status and body, one effect."""
    return await _replay_like(client, target, "replay", wait=None)


async def key_lifetime(client: ProbeClient, target: Target, run: str) -> Finding:
    """Same key again after ``target.key_lifetime`` seconds: still replayed?"""
    return await _replay_like(client, target, "key_lifetime", wait=target.key_lifetime)


async def _replay_like(
    client: ProbeClient, target: Target, check: str, *, wait: float | None
) -> Finding:
    skip = _not_a_write(target, check)
    if skip is not None:
        return skip
    if check == "key_lifetime" and wait is None:
        return _skipped(
            target,
            check,
            "no key_lifetime in the file: the key's lifetime was not probed.",
            "set key_lifetime = SECONDS on the target (the partner's documented lifetime) "
            "to check that a late retry is still replayed.",
        )
    sender = _Sender(client, target, check)
    sender.need(1 + _WORST_SETTLE, 2)
    n = _N[check]
    body, key = sender.body(n), sender.key(n)
    before = await sender.count(n)
    first = await sender.send(n, body, key)
    if wait is not None:
        await client.wait(wait)
    second = await sender.settled(n, body, key)
    effects = _difference(before, await sender.count(n))
    if wait is None:
        judgement = judge_replay(first, second, effects)
    else:
        judgement = judge_key_lifetime(first, second, effects, seconds=wait)
    return sender.finding(
        judgement,
        effects=effects,
        statuses=[first.status, second.status],
        same_body=same_body(first, second),
        replayed_header=_says_replayed(second),
        **({} if wait is None else {"waited": wait}),
    )


async def lost_response(client: ProbeClient, target: Target, run: str) -> Finding:
    """The first answer cut by the probe, then the same request: one effect, an outcome."""
    skip = _not_a_write(target, "lost_response")
    if skip is not None:
        return skip
    sender = _Sender(client, target, "lost_response")
    sender.need(1 + _WORST_SETTLE, 2)
    n = _N["lost_response"]
    body, key = sender.body(n), sender.key(n)
    before = await sender.count(n)
    first = await sender.send(n, body, key, cut=True)
    second = await sender.settled(n, body, key)
    effects = _difference(before, await sender.count(n))
    return sender.finding(
        judge_lost_response(first, second, effects),
        effects=effects,
        statuses=[first.status, second.status],
        cut=first.error == CUT_ERROR,
        cut_status=first.cut_status,
        replayed_header=_says_replayed(second),
    )


async def concurrent(client: ProbeClient, target: Target, run: str) -> Finding:
    """``target.concurrency`` copies with one key at once: one effect; what did the others get?"""
    skip = _not_a_write(target, "concurrent")
    if skip is not None:
        return skip
    copies = max(2, target.concurrency)
    sender = _Sender(client, target, "concurrent")
    sender.need(copies, 2)
    n = _N["concurrent"]
    body, key = sender.body(n), sender.key(n)
    before = await sender.count(n)
    exchanges = await asyncio.gather(*(sender.send(n, body, key) for _ in range(copies)))
    effects = _difference(before, await sender.count(n))
    return sender.finding(
        judge_concurrent(exchanges, effects),
        effects=effects,
        requests=copies,
        statuses=[e.status for e in exchanges],
    )


async def mismatch(client: ProbeClient, target: Target, run: str) -> Finding:
    """One key, then another body with it: refused, or accepted (replayed or executed)?"""
    skip = _not_a_write(target, "mismatch")
    if skip is not None:
        return skip
    n, m = _N["mismatch"], _N["mismatch"] + 1
    sender = _Sender(client, target, "mismatch")
    first_body, other_body = sender.body(n), sender.body(m)
    if first_body is None or first_body == other_body:
        return _skipped(
            target,
            "mismatch",
            "the body template gives the same body every time: the probe cannot make "
            "another request for the same key.",
            "put {{n}} or {{uuid}} in the body (e.g. in a reference field) to run this check.",
        )
    sender.need(1 + _WORST_SETTLE, 4)
    key = sender.key(n)
    first_before = await sender.count(n)
    other_before = await sender.count(m)
    first = await sender.send(n, first_body, key)
    second = await sender.settled(m, other_body, key)
    first_effects = _difference(first_before, await sender.count(n))
    other_effects = _difference(other_before, await sender.count(m))
    return sender.finding(
        judge_mismatch(first, second, first_effects, other_effects),
        effects=first_effects,
        other_effects=other_effects,
        statuses=[first.status, second.status],
        same_body=same_body(first, second),
    )


async def no_key(client: ProbeClient, target: Target, run: str) -> Finding:
    """A write without the key header: refused or accepted (a fact about the partner)."""
    skip = _not_a_write(target, "no_key")
    if skip is not None:
        return skip
    sender = _Sender(client, target, "no_key")
    sender.need(1, 2)
    n = _N["no_key"]
    before = await sender.count(n)
    exchange = await sender.send(n, sender.body(n), None)
    effects = _difference(before, await sender.count(n))
    return sender.finding(
        judge_no_key(exchange, effects),
        effects=effects,
        statuses=[exchange.status],
        accepted=_ok(exchange),
    )


#: The idempotency checks by the name a probe file gives them (``checks = [...]``).
IDEMPOTENCY_CHECKS: dict[str, Check] = {
    "replay": replay,
    "lost_response": lost_response,
    "concurrent": concurrent,
    "mismatch": mismatch,
    "no_key": no_key,
    "key_lifetime": key_lifetime,
}
