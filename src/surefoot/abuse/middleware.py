"""``AbuseGuard``: bans, allows, temporary limits, challenges and failure-based bans (ASGI).

Per request, before anything else runs::

    match the worker's BanSet (address, network, principal)  ── allow ─► on, never counted
        │ ban ─► 403 access_denied   limit ─► 429 abuse_limit_exceeded   challenge ─► 429 / header
        ▼
    anomaly detector counts the client (no store call)
        ▼
    a route a failure rule names? ── no ─► the app
        │ yes: read the account tried (a header, or the body, bounded and replayed)
        │      an account banned ─► 403
        ▼
    the app; its answer's status counted per rule and subject in the store ─► ban / challenge

Rule 1: an allow always wins: a request an allow matches is never refused, limited,
        challenged or counted by abuse protection (rate limits still apply).
Rule 2: a refusal says nothing an attacker could use: ``access_denied`` (403) carries no
        reason, no expiry and no ``Retry-After``; the reason is in the abuse log.
Rule 3: what a request is checked against costs no store call: the ``BanSet`` is the
        worker's (``SharedBans`` keeps it in step), and the anomaly detector counts in
        memory. Only a temporary limit in force (one store round trip for that client)
        and a failure to count (after the answer is sent) call the store.
Rule 4: a failure is counted after the app answered, from the status it sent: the
        request that crosses a threshold is answered as the app answered it, and the ban
        holds from the next request (on every worker after their next sync).
Rule 5: a body read for its account is bounded by ``max_body`` and given to the app
        unchanged, chunk for chunk; a larger one is answered 413 ``request_body_too_large``
        on the routes whose rules read it (padding a login is no way around an account's
        ban), and a login naming the account twice 400 ``account_ambiguous``.
Rule 6: a store that fails while counting or banning never fails the request: the
        failure is logged (once a minute at most) and nothing is counted.
Rule 7: with a challenge sent as a header, a client's own copy of that header is removed
        from every request: the upstream acts on the guard's word only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from surefoot._asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    request_id,
    route_method,
    send_problem,
)
from surefoot._routes import RouteTable
from surefoot.abuse._anomaly import Anomaly, AnomalyDetector
from surefoot.abuse._bans import Action, Entry, Kind
from surefoot.abuse._events import (
    AbuseRefused,
    AnomalyEnded,
    AnomalyStarted,
    EntryAdded,
    FailuresCrossed,
)
from surefoot.abuse._failures import AccountSource, FailureRule, account_hash
from surefoot.abuse._log import Privacy, shown
from surefoot.abuse._shared import SharedBans
from surefoot.clock import Clock, SystemClock
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    AbuseLimitExceeded,
    AccessDenied,
    AccountAmbiguous,
    ChallengeRequired,
    CredentialsAmbiguous,
    RequestBodyTooLarge,
    SurefootError,
)
from surefoot.events import EventHook, emit, wanted
from surefoot.identity import Identity
from surefoot.ratelimit import Item, Limit, RateLimitStore

__all__ = ["AbuseGuard", "AnomalyResponse", "Challenge"]

_log = logging.getLogger("surefoot.abuse")
#: Seconds between two log lines about a failing store.
_QUIET = 60.0


@dataclass(frozen=True, slots=True)
class Challenge:
    """What a suspicious client gets (``[abuse.challenge]``): ``refuse`` answers 429
    ``challenge_required`` naming ``url``; ``header`` lets the request on with ``header``
    set to why it is suspicious (``failures;rule=login`` or ``anomaly``), for the app to
    act on. surefoot does not run a CAPTCHA: the page at ``url`` does, then lifts the
    challenge (``DELETE /admin/bans/...``) or allows the client for a while."""

    action: Literal["refuse", "header"] = "refuse"
    url: str = ""
    header: str = "surefoot-suspicion"
    retry_after: int = 30


@dataclass(frozen=True, slots=True)
class AnomalyResponse:
    """What the gateway does when a client's rate is anomalous (``[abuse.anomaly]``):
    ``report`` (an event, a metric and the abuse log), ``tighten`` (also a temporary limit
    of ``tighten_to`` times its usual rate, for ``tighten_for`` seconds) or ``challenge``
    (also a challenge for ``tighten_for`` seconds)."""

    action: Literal["report", "tighten", "challenge"] = "report"
    tighten_to: float = 2.0
    tighten_for: float = 600.0


class AbuseGuard:
    """Abuse protection in front of ``app`` (see the module's rules).

    Example:
        >>> shared = SharedBans(store)
        >>> app = AbuseGuard(app, shared=shared, identity=Identity(),
        ...                  rules=[FailureRule("login", ("POST /login",), Kind.ADDRESS)],
        ...                  counters=store)

    Args:
        app: the app (or the next layer) to protect.
        shared: the entries in force (the gateway's, kept across reloads).
        identity: who is calling (address through trusted proxies, principal).
        rules: failure rules; they need ``counters``.
        counters: the rate-limit store counting failures and temporary limits.
        detector: the anomaly detector (None: no anomaly detection).
        anomaly: what an anomaly leads to.
        challenge: what suspicious traffic gets (None: it is let on).
        workers: processes sharing the traffic (a temporary limit is for all of them).
        privacy: how addresses appear in events and the abuse log.
        secret: key for hashing accounts (and addresses, with ``privacy="hash"``).
        max_body: the most bytes read for an account in the body.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        shared: SharedBans,
        identity: Identity,
        rules: Sequence[FailureRule] = (),
        counters: RateLimitStore | None = None,
        detector: AnomalyDetector | None = None,
        anomaly: AnomalyResponse = AnomalyResponse(),
        challenge: Challenge | None = None,
        clock: Clock | None = None,
        hooks: Sequence[EventHook] = (),
        workers: int = 1,
        privacy: Privacy = "full",
        secret: bytes = b"",
        max_body: int = 64 * 1024,
        problem_base: str = DEFAULT_PROBLEM_BASE,
    ) -> None:
        if rules and counters is None:
            raise ValueError("AbuseGuard: failure rules need a store to count in (counters)")
        self.app = app
        self.shared = shared
        self.identity = identity
        self.rules = tuple(rules)
        # One table per list of routes: the rules of one login route are matched once.
        grouped: dict[tuple[str, ...], list[FailureRule]] = {}
        for rule in rules:
            grouped.setdefault(rule.routes, []).append(rule)
        self._tables = [
            (tuple(group), RouteTable((template, None) for template in routes))
            for routes, group in grouped.items()
        ]
        self.counters = counters
        self.detector = detector
        self.anomaly = anomaly
        self.challenge = challenge
        self.clock = clock if clock is not None else SystemClock()
        self.hooks = tuple(hooks)
        self.workers = workers
        self.privacy = privacy
        self.secret = secret
        self.max_body = max_body
        self.problem_base = problem_base
        self._sources = tuple(dict.fromkeys(r.account for r in rules if r.account is not None))
        self._refused_wanted = wanted(self.hooks, AbuseRefused)
        self._suspicion: bytes | None = None
        if challenge is not None and challenge.action == "header":
            self._suspicion = challenge.header.encode()
        self._quiet_until = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._suspicion is not None:  # only the guard says who is suspicious (Rule 7)
            scope["headers"] = [h for h in scope["headers"] if h[0] != self._suspicion]
        bans = self.shared.bans
        detector = self.detector
        if not (len(bans) or detector is not None or self._tables):
            await self.app(scope, receive, send)
            return
        now = self.clock.now()
        identity = self.identity
        address = identity.client_address(scope)
        try:
            principal = identity(scope)
            client = identity.rate_limit_principal(scope)
        except CredentialsAmbiguous:  # the gateway answered it before; an app will
            principal = client = "addr:" + address
        principals = (principal,) if principal == client else (principal, client)
        hit = bans.match(now, address, principals) if len(bans) else None
        if hit is not None:
            if hit.action is Action.ALLOW:  # Rule 1
                await self.app(scope, receive, send)
                return
            if await self._act(hit, scope, send, now):
                return
        if detector is not None:
            detector.observe(client, now)
        # The method the request names and, with an allowed override, the one it asks
        # for: the upstream may act on either, so a rule of either applies.
        path = scope["path"]
        methods = {route_method(scope), "GET" if scope["method"] == "HEAD" else scope["method"]}
        rules = [
            rule
            for group, table in self._tables
            if any(table.match(method, path) for method in methods)
            for rule in group
        ]
        if not rules:
            await self.app(scope, receive, send)
            return
        await self._guarded(rules, scope, receive, send, address, principal, now)

    # -- acting on an entry ---------------------------------------------------------------------

    async def _act(self, entry: Entry, scope: Scope, send: Send, now: float) -> bool:
        """Apply ``entry`` (not an allow) to the request; True if it was answered here."""
        rid = request_id(scope)
        if entry.action is Action.BAN:
            self._refused(entry, rid, now)
            await send_problem(send, AccessDenied(), request_id=rid, base=self.problem_base)
            return True
        if entry.action is Action.LIMIT:
            wait = await self._limited(entry, now)
            if wait is None:  # within the limit: a challenge of the subject still applies
                also = self.shared.bans.get(f"challenge {entry.kind.value} {entry.value}")
                if also is not None and also.active(now):
                    return await self._act(also, scope, send, now)
                return False
            self._refused(entry, rid, now)
            error = AbuseLimitExceeded(retry_after=wait)
            await send_problem(send, error, request_id=rid, base=self.problem_base)
            return True
        challenge = self.challenge  # Action.CHALLENGE
        if challenge is None:
            return False
        if challenge.action == "header":
            why = entry.source.replace("failures:", "failures;rule=")
            scope["headers"] = [*scope["headers"], (challenge.header.encode(), why.encode())]
            return False
        self._refused(entry, rid, now)
        challenged = ChallengeRequired(challenge=challenge.url, retry_after=challenge.retry_after)
        await send_problem(send, challenged, request_id=rid, base=self.problem_base)
        return True

    async def _limited(self, entry: Entry, now: float) -> int | None:
        """The seconds to wait if the request is over ``entry``'s temporary limit, else None
        (a store that fails lets it on: Rule 6)."""
        if self.counters is None:
            return None
        # At least a minute, and long enough to hold one request at a slow rate.
        window = max(60.0, 1.0 / entry.rate)
        amount = max(1, round(entry.rate * window))
        burst = max(1, math.ceil(entry.rate * 10))
        item = Item(f"abuse:limit:{entry.slot}", "gcra", Limit(amount, window, burst=burst))
        try:
            admitted, decisions = await self.counters.acquire([item], now)
        except Exception as exc:
            self._store_failed(exc)
            return None
        if admitted:
            return None
        return max(1, math.ceil(decisions[0].retry_after))

    def _refused(self, entry: Entry, rid: str, now: float) -> None:
        if self._refused_wanted:
            emit(
                self.hooks,
                AbuseRefused(
                    at=now,
                    request_id=rid,
                    action=entry.action.value,
                    kind=entry.kind.value,
                    source=entry.source,
                ),
            )

    # -- failure rules --------------------------------------------------------------------------

    async def _guarded(
        self,
        rules: list[FailureRule],
        scope: Scope,
        receive: Receive,
        send: Send,
        address: str,
        principal: str,
        now: float,
    ) -> None:
        accounts: dict[AccountSource, str] = {}
        wanted_sources = [s for s in self._sources if any(r.account == s for r in rules)]
        if wanted_sources:
            body = b""
            if any(source.reads_body for source in wanted_sources):
                body, receive, whole = await _peek_body(receive, self.max_body)
                if not whole:  # Rule 5: an account behind the bound is no way around a ban
                    error: SurefootError = RequestBodyTooLarge(limit=self.max_body)
                    await send_problem(
                        send, error, request_id=request_id(scope), base=self.problem_base
                    )
                    return
            for source in wanted_sources:
                names = source.extract(scope["headers"], scope.get("query_string", b""), body)
                if len(names) > 1:  # _failures Rule 6
                    error = AccountAmbiguous(source=str(source))
                    await send_problem(
                        send, error, request_id=request_id(scope), base=self.problem_base
                    )
                    return
                if names:
                    accounts[source] = account_hash(names[0], self.secret)
            bans = self.shared.bans
            if accounts and len(bans):
                hit = bans.match(now, accounts=accounts.values())
                if hit is not None and hit.action is Action.ALLOW:  # Rule 1: never counted
                    await self.app(scope, receive, send)
                    return
                if hit is not None and await self._act(hit, scope, send, now):
                    return
        status = 0

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, tracked)
        failed = [rule for rule in rules if rule.counts(status)]
        if not failed:
            return
        route = route_method(scope) + " " + scope["path"]
        for rule in failed:
            account = accounts.get(rule.account) if rule.account is not None else None
            subject = rule.subject(address, principal, account)
            if subject is not None:
                await self._count(rule, subject, address, route, request_id(scope))

    async def _count(
        self, rule: FailureRule, subject: str, address: str, route: str, rid: str
    ) -> None:
        assert self.counters is not None  # __init__ wants them with rules
        now = self.clock.now()
        slot = f"{Action.BAN.value} {rule.by.value} {subject}"
        last = self.shared.bans.get(slot)
        if last is not None and now >= last.forget_at:
            last = None  # forgotten
        since = last.at if last is not None else None
        item = Item(rule.counter(subject, since), "sliding_log", Limit(rule.threshold, rule.window))
        try:
            _, decisions = await self.counters.acquire([item], now)
        except Exception as exc:
            self._store_failed(exc)
            return
        decision = decisions[0]
        step = rule.verdict(decision.remaining, decision.allowed)
        if step is None:
            return
        count = rule.threshold if not decision.allowed else rule.threshold - decision.remaining
        action = Action.BAN if step == "ban" else Action.CHALLENGE
        if action is Action.CHALLENGE:
            if self.challenge is None:
                return
            slot = f"{action.value} {rule.by.value} {subject}"
        existing = self.shared.bans.get(slot)
        if (existing is not None and existing.active(now)) or self.shared.is_configured(slot):
            return  # in force already (a request that was in flight, a late sync, the file)
        offence = last.offence + 1 if last is not None and action is Action.BAN else 1
        duration = rule.ban_for(offence) if action is Action.BAN else rule.window
        entry = self._entry(
            action=action,
            kind=rule.by,
            value=subject,
            until=now + duration,
            reason=f"{count} failures in {rule.window:g}s",
            source=f"failures:{rule.name}",
            at=now,
            offence=offence,
            forget_at=now + duration + rule.forget_after,
        )
        # A ban is claimed once per offence after the last one (two workers crossing one
        # threshold make one ban); a challenge once per window.
        if action is Action.BAN:
            token = f"{offence}@{since:.0f}" if since is not None else f"{offence}"
        else:
            token = f"{now // rule.window:.0f}"
        if entry is None or not await self._claim(entry, token=token):
            return
        emit(
            self.hooks,
            FailuresCrossed(
                at=now,
                request_id=rid,
                rule=rule.name,
                kind=rule.by.value,
                subject=self._shown(rule.by, subject),
                step=step,
                count=count,
                threshold=rule.threshold,
                window=rule.window,
                address=self._shown(Kind.ADDRESS, address),
                route=route,
            ),
        )
        self._added(entry, duration, rid)

    def _entry(self, **fields: Any) -> Entry | None:
        """An entry, or None if its subject cannot be one (a user id with spaces, say:
        ``Entry`` checks every subject), logged once a minute at most."""
        try:
            return Entry(**fields)
        except ValueError as exc:
            self._quietly("abuse: cannot act on a %s: %s", fields["kind"].value, exc)
            return None

    async def _claim(self, entry: Entry, token: str | None = None) -> bool:
        try:
            return await self.shared.claim(entry, token=token)
        except ValueError as exc:  # a full board: the operator must act
            self._quietly(
                "abuse: cannot write the %s of a %s: %s", entry.action.value, entry.kind.value, exc
            )
        except Exception as exc:
            self._store_failed(exc)
        return False

    def _added(self, entry: Entry, duration: float, rid: str, by: str = "") -> None:
        emit(
            self.hooks,
            EntryAdded(
                at=entry.at,
                request_id=rid,
                action=entry.action.value,
                kind=entry.kind.value,
                subject=self._shown(entry.kind, entry.value),
                until=entry.until,
                duration=duration,
                reason=entry.reason,
                source=entry.source,
                offence=entry.offence,
                rate=entry.rate,
                by=by,
            ),
        )

    def _shown(self, kind: Kind, value: str) -> str:
        return shown(kind.value, value, self.privacy, self.secret)

    def _store_failed(self, exc: Exception) -> None:
        self._quietly("abuse: the store failed (%s); nothing counted", type(exc).__name__)

    def _quietly(self, message: str, *args: object) -> None:
        """A WARNING line, at most once a minute (Rule 6)."""
        now = time.monotonic()
        if now >= self._quiet_until:
            self._quiet_until = now + _QUIET
            _log.warning(message, *args)

    # -- anomalies ------------------------------------------------------------------------------

    async def evaluate(self) -> list[Anomaly]:
        """Close the detector's steps up to now and act on what changed (the gateway calls
        it every ``[abuse.anomaly] step``); the changes."""
        if self.detector is None:
            return []
        now = self.clock.now()
        changes = self.detector.evaluate(now)
        settings = self.detector.settings
        response = self.anomaly
        for change in changes:
            client = self._shown(Kind.PRINCIPAL, change.client)
            if not change.started:
                emit(
                    self.hooks,
                    AnomalyEnded(
                        at=change.at,
                        request_id="",
                        client=client,
                        rate=change.rate,
                        baseline=change.baseline,
                        since=change.since,
                    ),
                )
                continue
            emit(
                self.hooks,
                AnomalyStarted(
                    at=change.at,
                    request_id="",
                    client=client,
                    rate=change.rate,
                    baseline=change.baseline,
                    factor=settings.factor,
                    window=settings.window,
                    since=change.since,
                    action=response.action,
                ),
            )
            if response.action != "report":
                await self._respond(change, now)
        return changes

    async def _respond(self, change: Anomaly, now: float) -> None:
        response = self.anomaly
        kind, value = Kind.PRINCIPAL, change.client
        if value.startswith("addr:"):
            kind, value = Kind.ADDRESS, value[5:]
        tighten = response.action == "tighten"
        action = Action.LIMIT if tighten else Action.CHALLENGE
        slot = f"{action.value} {kind.value} {value}"
        existing = self.shared.bans.get(slot)
        if self.shared.is_configured(slot) or (
            existing is not None and existing.active(now) and existing.source != "anomaly"
        ):
            return  # an operator's or the file's entry stands: never replaced by a guess
        # Never 0 (that would be a ban): at least one request a minute.
        rate = max(change.baseline * response.tighten_to * self.workers, 1 / 60) if tighten else 0.0
        entry = self._entry(
            action=action,
            kind=kind,
            value=value,
            until=now + response.tighten_for,
            reason=f"rate {change.rate:.3g}/s, usually {change.baseline:.3g}/s",
            source="anomaly",
            at=now,
            rate=rate,
        )
        if entry is not None and await self._claim(entry, token=f"{change.since:.0f}"):
            self._added(entry, response.tighten_for, "")


async def _peek_body(receive: Receive, limit: int) -> tuple[bytes, Receive, bool]:
    """Read the body up to ``limit`` bytes: (the body, a receive that gives the app every
    message read and then the rest, and whether the body is whole within ``limit``: False
    when it is larger) (Rule 5). A client that left gives a whole empty body."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > limit or not message.get("more_body", False):
            break
    whole = size <= limit
    body = b"".join(m.get("body", b"") for m in messages) if whole else b""

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return body, replay, whole
