"""``Surefoot``: idempotency keys and rate limits for a Flask app, on the guards of
``surefoot.wsgi`` and the synchronous stores.

Theory of operation, per request::

    app.wsgi_app  ──► canonical path (the one rule of every surefoot layer), then Flask routes
    before_request ─► the app-wide RateLimitGuard: refused -> HTTPProblem (429, 503, 400)
    dispatch_request ► the app-wide IdempotencyGuard around the view (replay, 409, 422...)
    view ──────────► @surefoot.limit (a RateLimitGuard per view), @surefoot.idempotent
    after_request ──► RateLimit headers; concurrency slots freed (call_on_close if streamed)
    teardown ───────► slots not freed yet (an exception before any response) are freed

Rule 1: one configuration format. Without ``store``/``policies``/``routes``/``idempotency``
        arguments the app-wide protections come from ``app.config["SUREFOOT"]``, read by
        the gateway's parser (``surefoot.gateway.app_settings``: the policy file's tables).
Rule 2: every refusal goes through Flask's error handling as an ``HTTPProblem`` (a
        werkzeug ``HTTPException`` of the problem's status): ``@app.errorhandler(429)``
        sees it; without a handler the answer is the ASGI middlewares' problem+json. A
        ``SurefootError`` raised by a view takes the same path.
Rule 3: an admitted request's concurrency slots are freed exactly once: after a buffered
        response, on ``close()`` of a streamed one, or at teardown when no response
        carried them.
Rule 4: rate limits come before idempotency (as the ASGI middlewares are stacked), and
        a view with ``@surefoot.idempotent`` is not protected twice by the app-wide guard.
Rule 5: one guard per process and per app; per-view guards are built on first use, from
        the app's stores. Every guard is thread-safe: per-request state lives in ``g``.
Rule 6: one principal never receives another's stored response (DESIGN, idempotency 1).
        ``user=`` tells who is logged in (read in the view, after the app's hooks); a
        protected request that carries a ``Cookie`` but resolves only to its address,
        with neither ``user=`` nor ``principal=`` given, is refused (500, logged): the
        address would be shared by every cookie-session user behind it.
Rule 7: a rate-limit policy name counts one set of counters: a decorator's name that is
        also an app-wide policy's is refused; a decorator without ``name=`` counts per
        endpoint (``blueprint.endpoint``), whatever the view function is called.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from weakref import WeakKeyDictionary

from flask import Flask, current_app, g, request
from flask import Response as FlaskResponse
from flask.typing import ResponseReturnValue

from surefoot._health import StoreHealth
from surefoot.clock import Clock
from surefoot.errors import (
    DEFAULT_PROBLEM_BASE,
    BackendError,
    ConfigurationError,
    SurefootError,
)
from surefoot.events import EventHook
from surefoot.flask._problem import HTTPProblem
from surefoot.flask._protect import abandon, as_exception, hold, protect, read_body
from surefoot.idempotency import IdempotencyPolicy
from surefoot.identity import PrincipalResolver, default_principal
from surefoot.ratelimit import Limit, RateLimitPolicy, TierResolver, Verdict
from surefoot.wsgi import IdempotencyGuard, RateLimitGuard, Request, Response, problem_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from surefoot.gateway import AppSettings
    from surefoot.storage import SyncStore

__all__ = ["Surefoot"]

F = TypeVar("F", bound=Callable[..., Any])

MiB = 1024 * 1024
_G = "_surefoot"
_REFUSED = "surefoot.flask.refused"
_IDEMPOTENT = "__surefoot_idempotent__"
#: A problem's headers a handler's own page keeps (Rule 2), unless it sets them itself.
_KEPT = frozenset(
    {
        "retry-after",
        "ratelimit",
        "ratelimit-policy",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-request-id",
    }
)
_NAME = re.compile(r"[^A-Za-z0-9_.-]")
#: Why a cookie caller known only by its address is refused (Rule 6).
_COOKIE_REFUSED = (
    "Surefoot: a request with a Cookie header resolves only to its client address, so "
    "every cookie-session user behind that address would share idempotency keys (one "
    "could receive another's stored response). Pass user= (for example "
    "user=lambda: flask_login.current_user or user=lambda: g.user), or principal=; "
    "user=lambda: None if cookies never identify a caller here"
)
_log = logging.getLogger("surefoot.flask")
#: A user-supplied function of the request giving its authenticated user (Rule 6).
UserResolver = Callable[[], object]


class Surefoot:
    """Idempotency keys and rate limits for a Flask app.

    Example:
        >>> surefoot = Surefoot(
        ...     app,
        ...     store="sqlite:///surefoot.db",
        ...     policies=[RateLimitPolicy("default", limits=["100/minute"])],
        ...     routes={"POST /v1/charges": IdempotencyPolicy()},
        ... )
        >>> @app.post("/v1/refunds")
        ... @surefoot.limit("10/minute")
        ... @surefoot.idempotent()
        ... def refund(): ...

    Or configured like the gateway's policy file (``surefoot.gateway.app_settings``)::

        app.config["SUREFOOT"] = {
            "stores": {"default": "sqlite:///surefoot.db"},
            "rate_limit": {"policies": [{"name": "default", "limits": ["100/minute"]}]},
            "routes": [{"match": "POST /v1/charges", "idempotency": {"ttl": 86400}}],
        }
        surefoot = Surefoot()
        surefoot.init_app(app)

    Args:
        app: the app, or None to call ``init_app`` later (an application factory).
        store: the synchronous store (``SyncSqliteStore``...) or its URL
            (``sync_store_from_url``), for records and counters.
        idempotency_store, rate_limit_store: a store for one concern only (default: ``store``).
        policies: the app-wide rate-limit policies (their ``routes`` say what they cover).
        routes: route template -> ``IdempotencyPolicy`` (None: unprotected): the routes
            protected app-wide by idempotency keys.
        idempotency: the policy of every route not in ``routes`` (default: none; only
            ``routes`` are protected).
        principal: who is calling (default: the hashed credential, else ``user``, else
            the address).
        user: the authenticated user, called in the view (after the app's hooks):
            ``lambda: flask_login.current_user``, ``lambda: g.user``. Its
            ``is_authenticated`` and ``identity`` (or ``display_name``) scope idempotency
            keys and ``@surefoot.limit`` counters. Required when callers log in with a
            cookie session (Rule 6); ``lambda: None`` when cookies identify nobody.
        tier: the tier of a principal (``RateLimitPolicy.tiers``).
        headers, legacy_headers: the ``RateLimit`` / ``X-RateLimit-*`` response headers.
        clock, sleep, hooks, store_health, fallback_workers, max_request_body,
        max_stored_response, problem_base, allow_method_override: as the guards of
            ``surefoot.wsgi`` (when given, they also apply to ``app.config`` settings).
        config_key: the ``app.config`` key read when no protection is passed here.

    Warning:
        The extension's ``before_request`` hook runs before the app's own (a refused
        request costs them nothing), so a tier or key function cannot read what an
        authentication hook puts in ``g``; ``@surefoot.limit(key=...)`` and ``user``
        run in the view and can. With cookie-session logins, pass ``user`` (Rule 6).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        store: SyncStore | str | None = None,
        idempotency_store: SyncStore | str | None = None,
        rate_limit_store: SyncStore | str | None = None,
        policies: Sequence[RateLimitPolicy] | None = None,
        routes: Mapping[str, IdempotencyPolicy | None] | None = None,
        idempotency: IdempotencyPolicy | None = None,
        principal: PrincipalResolver | None = None,
        user: UserResolver | None = None,
        tier: TierResolver | None = None,
        headers: bool | None = None,
        legacy_headers: bool | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], None] | None = None,
        hooks: Sequence[EventHook] | None = None,
        store_health: StoreHealth | None = None,
        fallback_workers: int | None = None,
        max_request_body: int | None = None,
        max_stored_response: int | None = None,
        problem_base: str = DEFAULT_PROBLEM_BASE,
        allow_method_override: bool | None = None,
        config_key: str = "SUREFOOT",
    ) -> None:
        self._stores = {"store": store, "idempotency": idempotency_store, "rate": rate_limit_store}
        self._policies = policies
        self._routes = routes
        self._idempotency = idempotency
        self._principal = principal
        self._user = user
        self._tier = tier
        self._headers = headers
        self._legacy_headers = legacy_headers
        self._clock = clock
        self._sleep = sleep
        self._hooks = hooks
        self._store_health = store_health
        self._fallback_workers = fallback_workers
        self._max_request_body = max_request_body
        self._max_stored_response = max_stored_response
        self.problem_base = problem_base
        self._allow_method_override = allow_method_override
        self.config_key = config_key
        self._apps: WeakKeyDictionary[Flask, _AppState] = WeakKeyDictionary()
        self._names: dict[str, str] = {}
        self._app_policies: set[str] = set()
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    # -- setting up an app ---------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Protect ``app``: register the hooks, the error handler and the guards.

        ``app.config`` is validated here; the guards and stores are made on the first
        request of each process (Rule 5): an app gunicorn loads with ``--preload`` opens
        nothing before the workers are forked.

        Raises:
            ConfigurationError: ``app.config["SUREFOOT"]`` is wrong (with the field's path),
                or ``app`` is set up already.
        """
        if app in self._apps:
            raise ConfigurationError("Surefoot.init_app: this app is set up already")
        settings = None if self._explicit else self._settings(app)
        self._validate_stores(settings)
        names = {p.name for p in self._policies or ()}
        if settings is not None:
            names.update(p.name for p in settings.rate_limit_policies)
        with self._lock:
            for name in sorted(names & set(self._names)):
                raise _duplicate(name)
            self._app_policies |= names
        state = _AppState(functools.partial(self._build, app))
        allow = self._allow_method_override
        if allow is None:
            allow = settings is not None and settings.allow_method_override
        state.allow_method_override = allow
        self._apps[app] = state
        app.extensions["surefoot"] = self
        app.wsgi_app = _Canonical(  # type: ignore[method-assign]
            app.wsgi_app, allow_method_override=allow, problem_base=self.problem_base
        )
        # First: a refused or over-limit request costs no other hook any work (Rule 4).
        app.before_request_funcs.setdefault(None, []).insert(0, self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        app.register_error_handler(SurefootError, self._handle_error)
        dispatch = app.dispatch_request
        app.dispatch_request = functools.partial(self._dispatch, dispatch)  # type: ignore[method-assign]

    @property
    def _explicit(self) -> bool:
        """Protections passed as arguments (else: ``app.config``, Rule 1)."""
        return any(v is not None for v in self._stores.values()) or any(
            v is not None for v in (self._policies, self._routes, self._idempotency)
        )

    def _settings(self, app: Flask) -> AppSettings | None:
        data = app.config.get(self.config_key)
        if data is None:
            return None
        # Imported here: the parser is the gateway's (surefoot[gateway]).
        from surefoot.gateway import app_settings

        return app_settings(data, source=f"app.config[{self.config_key!r}]")

    def _validate_stores(self, settings: AppSettings | None) -> None:
        """What can be checked of the stores before a fork: a SQLite file's directory."""
        if settings is not None:
            named = [
                (f"{settings.source} idempotency store", settings.idempotency_store),
                (f"{settings.source} rate_limit store", settings.rate_limit_store),
            ]
        else:
            labels = {
                "store": "store=",
                "idempotency": "idempotency_store=",
                "rate": "rate_limit_store=",
            }
            named = [
                (f"Surefoot({labels[k]})", v) for k, v in self._stores.items() if isinstance(v, str)
            ]
        for field, url in named:
            _check_sqlite_directory(field, url)

    def _build(self, app: Flask, state: _AppState) -> None:
        """Make ``state``'s guards, in this process (Rule 5)."""
        options: dict[str, Any] = {
            name: value
            for name, value in (
                ("clock", self._clock),
                ("sleep", self._sleep),
                ("hooks", self._hooks),
                ("store_health", self._store_health),
            )
            if value is not None
        }
        options["problem_base"] = self.problem_base
        idempotency_options = dict(options)
        if self._max_stored_response is not None:
            idempotency_options["max_stored_response"] = self._max_stored_response
        limiter_options = dict(options)
        if self._fallback_workers is not None:
            limiter_options["fallback_workers"] = self._fallback_workers
        state.idempotency_options = idempotency_options
        state.limiter_options = limiter_options
        if self._explicit:
            self._from_arguments(state)
            return
        settings = self._settings(app)
        if settings is not None:
            self._from_settings(state, settings)

    def _from_arguments(self, state: _AppState) -> None:
        opened: dict[str, SyncStore] = {}
        lock = threading.Lock()

        def store(value: SyncStore | str | None, field: str) -> Callable[[], SyncStore] | None:
            if value is None:
                return None
            if not isinstance(value, str):
                return lambda: value
            url = value

            def open_once() -> SyncStore:
                with lock:
                    if url not in opened:
                        from surefoot.storage import sync_store_from_url

                        opened[url] = _opened(field, url, sync_store_from_url)
                    return opened[url]

            return open_once

        default = store(self._stores["store"], "Surefoot(store=)")
        state.idempotency_store = (
            store(self._stores["idempotency"], "Surefoot(idempotency_store=)") or default
        )
        state.rate_limit_store = (
            store(self._stores["rate"], "Surefoot(rate_limit_store=)") or default
        )
        state.principal = self._principal or default_principal
        state.tier = self._tier
        state.max_request_body = self._max_request_body or MiB
        state.headers = True if self._headers is None else self._headers
        state.legacy_headers = bool(self._legacy_headers)
        if self._routes is not None or self._idempotency is not None:
            state.idempotency = IdempotencyGuard(
                store=state.need_store("idempotency"),
                policy=self._idempotency or IdempotencyPolicy(methods=frozenset()),
                routes=self._routes,
                **state.idempotency_arguments(state.idempotency_options),
            )
        if self._policies:
            state.rate_limit = RateLimitGuard(
                store=state.need_store("rate limit"),
                policies=self._policies,
                **state.limiter_arguments(state.limiter_options),
            )

    def _from_settings(self, state: _AppState, settings: AppSettings) -> None:
        idempotency_field = f"{settings.source} idempotency store"
        rate_limit_field = f"{settings.source} rate_limit store"
        state.idempotency_store = lambda: _opened(
            idempotency_field, settings.idempotency_store, settings.store
        )
        state.rate_limit_store = lambda: _opened(
            rate_limit_field, settings.rate_limit_store, settings.store
        )
        state.principal = self._principal or settings.identity
        state.tier = self._tier or settings.tier
        state.max_request_body = self._max_request_body or settings.max_request_body
        state.headers = settings.headers if self._headers is None else self._headers
        legacy = self._legacy_headers
        state.legacy_headers = settings.legacy_headers if legacy is None else legacy
        common: dict[str, Any] = {"allow_method_override": state.allow_method_override}
        if self._principal is not None:
            common["principal"] = self._principal
        limits = dict(common, headers=state.headers, legacy_headers=state.legacy_headers)
        if settings.protects:  # a rate limit alone asks no request for a key
            common["store"] = state.need_store("idempotency")
            state.idempotency = settings.idempotency_guard(
                **common, max_request_body=state.max_request_body, **state.idempotency_options
            )
        if self._tier is not None:
            limits["tier"] = self._tier
        if settings.rate_limit_policies:
            limits["store"] = state.need_store("rate limit")
            state.rate_limit = settings.rate_limit_guard(**limits, **state.limiter_options)

    def _state(self) -> _AppState:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        state = self._apps.get(app)
        if state is None:
            raise ConfigurationError(
                "Surefoot: this app is not set up: call surefoot.init_app(app) first"
            )
        return state.ready()

    # -- what an app sees ----------------------------------------------------------------

    def idempotency_guard(self, app: Flask | None = None) -> IdempotencyGuard | None:
        """The app-wide ``IdempotencyGuard`` of ``app`` (default: the current app), if any."""
        return self._state_of(app).idempotency

    def rate_limit_guard(self, app: Flask | None = None) -> RateLimitGuard | None:
        """The app-wide ``RateLimitGuard`` of ``app`` (default: the current app), if any."""
        return self._state_of(app).rate_limit

    def _state_of(self, app: Flask | None) -> _AppState:
        if app is None:
            return self._state()
        state = self._apps.get(app)
        if state is None:
            raise ConfigurationError("Surefoot: this app is not set up: call init_app(app)")
        return state.ready()

    # -- decorators ----------------------------------------------------------------------

    def limit(
        self,
        *limits: str | Limit,
        key: Callable[[], object] | None = None,
        name: str | None = None,
        methods: Iterable[str] | None = None,
        **policy: Any,
    ) -> Callable[[F], F]:
        """A rate limit of one view (on top of the app-wide policies).

        Example:
            >>> @app.post("/v1/charges")
            ... @surefoot.limit("10/minute", "100/day", key=lambda: g.account_id)
            ... def charge(): ...

        Args:
            limits: ``"10/minute"`` strings or ``Limit`` values (``Limit(2, 1,
                algorithm="concurrency", lease=60)``); a request must be within all.
            key: who is counted, called in the request (``lambda: g.user.id``); None or
                a None answer: the app's principal (the hashed credential, else the
                address). Return an id, not a secret: it is part of the store's keys.
            name: the policy's name (``RateLimit-Policy``, problems, store keys; default:
                the endpoint, ``blueprint.endpoint``: each endpoint counts on its own).
                Two views with one name, or an app-wide policy's name, are refused.
            methods: count only these methods (default: every method of the view);
                ``GET`` includes ``HEAD``.
            policy: more ``RateLimitPolicy`` fields (``algorithm``, ``tiers``,
                ``overrides``, ``shadow``, ``on_store_error``, ``per``...).

        Put it above ``@surefoot.idempotent`` so a refused retry costs no record.
        """
        if not limits:
            raise ConfigurationError("Surefoot.limit: expected at least one limit, '10/minute'")
        allowed = None if methods is None else frozenset(m.upper() for m in methods)
        if allowed is not None and "GET" in allowed:
            allowed |= {"HEAD"}  # a HEAD is a GET without its body (werkzeug routes it so)

        def decorate(view: F) -> F:
            spec = RateLimitPolicy(name or "view", limits=list(limits), **policy)  # validated
            if name is not None:
                self._claim(name, view)
            token = object()  # this decorator's guard, per app

            @functools.wraps(view)
            def limited(*args: Any, **kwargs: Any) -> Any:
                run = current_app.ensure_sync(view)
                if allowed is not None and request.method not in allowed:
                    return run(*args, **kwargs)
                state = self._state()
                guard = state.view_limiter(token, spec, key, named=name is not None)
                self._check(guard, user=self._current_user())
                return run(*args, **kwargs)

            return cast(F, limited)

        return decorate

    def idempotent(
        self, policy: IdempotencyPolicy | None = None, **fields: Any
    ) -> Callable[[F], F]:
        """Idempotency keys on one view (the app-wide routes then leave it alone).

        Example:
            >>> @app.post("/v1/payouts")
            ... @surefoot.idempotent(ttl=7 * 86400, on_server_error="unknown")
            ... def payout(): ...

        Args:
            policy: the ``IdempotencyPolicy`` (default: ``IdempotencyPolicy(**fields)``).
            fields: its fields, when no ``policy`` is given.
        """
        if policy is not None and fields:
            raise ConfigurationError(
                "Surefoot.idempotent: expected a policy or its fields, not both"
            )
        chosen = policy if policy is not None else IdempotencyPolicy(**fields)

        def decorate(view: F) -> F:
            @functools.wraps(view)
            def idempotent(*args: Any, **kwargs: Any) -> ResponseReturnValue:
                state = self._state()
                guard = state.view_guard(chosen, idempotent)
                run = current_app.ensure_sync(view)
                return self._protect(guard, lambda: run(*args, **kwargs))

            setattr(idempotent, _IDEMPOTENT, chosen)  # copied by functools.wraps above
            return cast(F, idempotent)

        return decorate

    def _claim(self, name: str, view: Callable[..., Any]) -> None:
        # The same view decorated again (an app factory run twice) keeps its name.
        origin = f"{view.__module__}.{view.__qualname__}"
        with self._lock:
            if name in self._app_policies or any(p.name == name for p in self._policies or ()):
                raise _duplicate(name)
            if self._names.setdefault(name, origin) != origin:
                raise ConfigurationError(
                    f"Surefoot.limit: two views name the policy {name!r} (they would share "
                    "counters): pass name="
                )

    def _current_user(self) -> object | None:
        """The ``user=`` answer of this request (Rule 6)."""
        return None if self._user is None else self._user()

    def _protect(self, guard: IdempotencyGuard, view: Callable[[], Any]) -> ResponseReturnValue:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return protect(app, guard, view, user=self._current_user(), vet=self._vet)

    def _vet(self, req: Request) -> None:
        """Refuse a cookie caller known only by its address (Rule 6)."""
        if self._user is not None or self._principal is not None:
            return
        if not any(name == b"cookie" for name, _ in req.scope["headers"]):
            return
        if self._state().principal(req.scope).startswith("addr:"):
            raise ConfigurationError(_COOKIE_REFUSED)

    # -- the request's path through Flask ------------------------------------------------

    def _before_request(self) -> None:
        refused = request.environ.get(_REFUSED)
        if isinstance(refused, Response):
            raise self._exception(refused)
        state = self._state()
        if state.rate_limit is not None:
            self._check(state.rate_limit)
        if self._reads_body(state):
            # Read now, before another hook parses a form (the fingerprint needs the bytes).
            try:
                read_body(state.max_request_body)
            except SurefootError as exc:
                req = Request.from_environ(request.environ)
                raise self._exception(
                    problem_response(exc, req, problem_base=self.problem_base)
                ) from None

    def _reads_body(self, state: _AppState) -> bool:
        """Whether an idempotency guard will read this request's body."""
        policy = _view_policy()
        if isinstance(policy, IdempotencyPolicy):
            return request.method in policy.methods
        guard = state.idempotency
        return (
            guard is not None
            and guard.select(Request.from_environ(request.environ).scope) is not None
        )

    def _check(self, guard: RateLimitGuard, *, user: object | None = None) -> None:
        checked = guard.check(Request.from_environ(request.environ, user=user))
        if checked is None:
            return
        if isinstance(checked, Response):
            raise self._exception(checked)
        _request_state().admitted.append(_Admitted(guard, checked))

    def _dispatch(self, dispatch: Callable[[], ResponseReturnValue]) -> ResponseReturnValue:
        guard = self._state().idempotency
        if guard is None or request.url_rule is None:
            return dispatch()
        if _view_policy() is not None:
            return dispatch()  # Rule 4: the view's own guard
        return self._protect(guard, dispatch)

    def _after_request(self, response: FlaskResponse) -> FlaskResponse:
        state: _RequestState | None = g.get(_G)
        if state is None:
            return response
        for admitted in state.admitted:
            if admitted.done:
                continue
            admitted.done = True
            for raw, data in admitted.verdict.headers:
                response.headers.add(raw.decode("latin-1"), data.decode("latin-1"))
            if admitted.verdict.held:
                if response.is_streamed or response.direct_passthrough:
                    hold(response, admitted.release)  # sent after this hook (send_file)
                else:
                    admitted.release()
        problem = state.problem
        if problem is not None and response.status_code == problem.code:
            present = {name.lower() for name in response.headers.keys()}  # noqa: SIM118
            for name, value in problem.headers:
                if name.lower() in _KEPT and name.lower() not in present:
                    response.headers.add(name, value)
        return response

    def _teardown_request(self, exc: BaseException | None) -> None:
        if exc is not None:
            abandon()  # the response that was to close them never goes out (a hook raised)
        state: _RequestState | None = g.get(_G)
        if state is None:
            return
        for admitted in state.admitted:
            if not admitted.done:  # no response carried it (Rule 3)
                admitted.done = True
                admitted.release()

    def _handle_error(self, error: SurefootError) -> ResponseReturnValue:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        if error.status >= 500 and not isinstance(error, BackendError):
            # Ours to fix (a ConfigurationError): the client gets the catalogue's 500,
            # the log gets the message and the traceback, as for any exception.
            app.log_exception((type(error), error, error.__traceback__))
        req = Request.from_environ(request.environ)
        problem = problem_response(error, req, problem_base=self.problem_base)
        return app.handle_http_exception(self._exception(problem))  # type: ignore[no-any-return]

    def _exception(self, problem: Response) -> HTTPProblem:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        exception = as_exception(app, problem)
        _request_state().problem = exception
        return exception

    def __repr__(self) -> str:
        return f"<Surefoot apps={len(self._apps)}>"


class _AppState:
    """One app's guards, stores and the options of its per-view guards, made by ``build``
    in each process that serves requests (Rule 5)."""

    def __init__(self, build: Callable[[_AppState], None]) -> None:
        self._build = build
        self._pid: int | None = None
        self.allow_method_override = False
        self.lock = threading.Lock()
        self._reset()

    def ready(self) -> _AppState:
        """This state, its guards made in this process (again after a fork)."""
        if self._pid != os.getpid():
            with self.lock:
                if self._pid != os.getpid():
                    self._reset()
                    self._build(self)
                    self._pid = os.getpid()
        return self

    def _reset(self) -> None:
        self.idempotency: IdempotencyGuard | None = None
        self.rate_limit: RateLimitGuard | None = None
        self.idempotency_store: Callable[[], SyncStore] | None = None
        self.rate_limit_store: Callable[[], SyncStore] | None = None
        self.principal: PrincipalResolver = default_principal
        self.tier: TierResolver | None = None
        self.max_request_body = MiB
        self.headers = True
        self.legacy_headers = False
        self.idempotency_options: dict[str, Any] = {}
        self.limiter_options: dict[str, Any] = {}
        self.views: dict[object, Any] = {}

    def need_store(self, concern: Literal["idempotency", "rate limit"]) -> SyncStore:
        opener = self.idempotency_store if concern == "idempotency" else self.rate_limit_store
        if opener is None:
            raise ConfigurationError(
                f"Surefoot: no {concern} store: pass store= (a sync store or its URL) "
                "or set app.config['SUREFOOT']"
            )
        return opener()

    def idempotency_arguments(self, options: dict[str, Any]) -> dict[str, Any]:
        return dict(
            options,
            principal=self.principal,
            max_request_body=self.max_request_body,
            allow_method_override=self.allow_method_override,
        )

    def limiter_arguments(self, options: dict[str, Any]) -> dict[str, Any]:
        return dict(
            options,
            principal=self.principal,
            tier=self.tier,
            headers=self.headers,
            legacy_headers=self.legacy_headers,
            allow_method_override=self.allow_method_override,
        )

    def view_guard(self, policy: IdempotencyPolicy, view: object) -> IdempotencyGuard:
        guard = self.views.get(view)
        if guard is None:
            with self.lock:
                guard = self.views.get(view)
                if guard is None:
                    guard = self.views[view] = IdempotencyGuard(
                        store=self.need_store("idempotency"),
                        policy=policy,
                        **self.idempotency_arguments(self.idempotency_options),
                    )
        return cast(IdempotencyGuard, guard)

    def view_limiter(
        self,
        token: object,
        policy: RateLimitPolicy,
        key: Callable[[], object] | None,
        *,
        named: bool,
    ) -> RateLimitGuard:
        """The guard of one decorator; without ``named``, one per endpoint (Rule 7)."""
        endpoint = "" if named or request.url_rule is None else request.url_rule.endpoint
        slot = (token, endpoint)
        guard = self.views.get(slot)
        if guard is None:
            with self.lock:
                guard = self.views.get(slot)
                if guard is None:
                    if not named:
                        policy = dataclasses.replace(policy, name=_NAME.sub("_", endpoint))
                    wide = self.rate_limit.policies if self.rate_limit is not None else ()
                    if any(p.name == policy.name for p in wide):
                        raise _duplicate(policy.name)
                    arguments = self.limiter_arguments(self.limiter_options)
                    if key is not None:
                        arguments["principal"] = _keyed(key, self.principal)
                    guard = self.views[slot] = RateLimitGuard(
                        store=self.need_store("rate limit"), policies=[policy], **arguments
                    )
        return cast(RateLimitGuard, guard)


def _keyed(key: Callable[[], object], fallback: PrincipalResolver) -> PrincipalResolver:
    # An unknown credential counts as its address, as the limiter counts it (identity, Rule 4).
    counted: PrincipalResolver = getattr(fallback, "rate_limit_principal", fallback)

    def principal(scope: Any) -> str:
        value = key()
        return counted(scope) if value is None else str(value)

    return principal


def _view_policy() -> IdempotencyPolicy | None:
    """The ``@surefoot.idempotent`` policy of this request's view, a ``View`` class's
    method included (``MethodView``: the method of the request's HTTP method)."""
    rule = request.url_rule
    view = None if rule is None else current_app.view_functions.get(rule.endpoint)
    policy = getattr(view, _IDEMPOTENT, None)
    if policy is None:
        view_class = getattr(view, "view_class", None)
        if view_class is not None:
            method = request.method.lower()
            handler = getattr(view_class, method, None)
            if handler is None and method == "head":
                handler = getattr(view_class, "get", None)
            if handler is None:
                handler = getattr(view_class, "dispatch_request", None)
            policy = getattr(handler, _IDEMPOTENT, None)
    return policy if isinstance(policy, IdempotencyPolicy) else None


def _duplicate(name: str) -> ConfigurationError:
    return ConfigurationError(
        f"Surefoot.limit: the policy name {name!r} is also an app-wide rate-limit policy's "
        "(a request would count twice in one set of counters): pass another name="
    )


def _check_sqlite_directory(field: str, url: str) -> None:
    """Refuse, at ``init_app``, a SQLite file whose directory does not exist (nothing is
    opened: a connection made before a fork is unsafe)."""
    if not url.startswith("sqlite:"):
        return
    from urllib.parse import urlsplit

    path = urlsplit(url).path
    path = path[1:] if path.startswith("/") else path
    directory = os.path.dirname(path) or "."
    if path and not os.path.isdir(directory):
        raise ConfigurationError(
            f"{field}: the directory {directory!r} of the SQLite file {path!r} does not exist"
        )


def _opened(field: str, url: str, open_store: Callable[[str], SyncStore]) -> SyncStore:
    """``open_store(url)``, its failure naming ``field`` (the URL masked)."""
    try:
        return open_store(url)
    except Exception as exc:
        from surefoot._masking import masked_url

        raise ConfigurationError(f"{field} ({masked_url(url)}): cannot open it: {exc}") from exc


class _Admitted:
    """A request's admitting verdict, until its slots are freed (Rule 3)."""

    __slots__ = ("done", "guard", "released", "verdict")

    def __init__(self, guard: RateLimitGuard, verdict: Verdict) -> None:
        self.guard = guard
        self.verdict = verdict
        self.done = False
        self.released = False

    def release(self) -> None:
        if not self.released:  # a response's close() and the teardown may both come
            self.released = True
            self.guard.release(self.verdict)


class _RequestState:
    """What one request's hooks pass each other, in ``g``."""

    __slots__ = ("admitted", "problem")

    def __init__(self) -> None:
        self.admitted: list[_Admitted] = []
        self.problem: HTTPProblem | None = None


def _request_state() -> _RequestState:
    state: _RequestState | None = g.get(_G)
    if state is None:
        state = _RequestState()
        setattr(g, _G, state)
    return state


class _Canonical:
    """The app's WSGI callable behind the one path rule (``surefoot._asgi.canonicalize``):
    Flask routes the path every guard matches; a refused path is answered by the first
    ``before_request`` hook, through Flask's error handling."""

    def __init__(
        self, app: WSGIApplication, *, allow_method_override: bool, problem_base: str
    ) -> None:
        self.app = app
        self.allow_method_override = allow_method_override
        self.problem_base = problem_base

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # On a copy: the guards build their own view of the request later, after any WSGI
        # middleware inside this one (ProxyFix) has rewritten the environ.
        probe = dict(environ)
        refused = Request.from_environ(probe).canonicalize(
            allow_method_override=self.allow_method_override
        )
        if refused is not None:
            req = Request.from_environ(environ)
            environ[_REFUSED] = problem_response(refused, req, problem_base=self.problem_base)
        else:
            environ["SCRIPT_NAME"] = probe.get("SCRIPT_NAME", "")
            environ["PATH_INFO"] = probe.get("PATH_INFO", "")
            for name in [name for name in environ if name not in probe]:
                del environ[name]  # method-override headers the one rule drops
        return self.app(environ, start_response)
