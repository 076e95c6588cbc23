"""``SurefootThrottle``: a Django REST framework throttle class backed by surefoot's limiter.

DRF keeps its contract: ``allow_request(request, view)`` says whether the request may go on,
``wait()`` how many seconds until it may, and DRF answers its own 429 with ``Retry-After``.
surefoot decides: one atomic store operation per decision, shared exactly by every worker
process (DRF's own throttles read and write a cache list without atomicity).

Rule 1: ``wait()`` is the refusal's ``Retry-After`` (whole seconds, the draft's ``t``), so
        DRF's ``Retry-After`` equals surefoot's and a client that waits that long is admitted.
Rule 2: the ``RateLimit`` and ``RateLimit-Policy`` fields of the decision are left on the
        Django request; ``RateLimitHeadersMiddleware`` adds them to the response DRF makes,
        its 429 included. (A throttle cannot touch the response itself.) With several
        throttles, a refusal's fields win over an admission's, and of two refusals the
        longer wait's (DRF's ``Retry-After`` is the longest wait), so ``RateLimit``'s ``t``
        equals ``Retry-After``.
Rule 3: the policy is, in this order: ``rate`` (limits of the class's own, counted under
        ``name``), ``policy`` (a ``[[rate_limit.policies]]`` name of ``settings.SUREFOOT``),
        the view's ``throttle_scope`` naming such a policy, or else every policy of
        ``settings.SUREFOOT`` (the same counters as ``RateLimitMiddleware``: use one or the
        other for a route, not both).
Rule 4: a refusal that is not a rate limit (400 ``invalid_path`` or
        ``credentials_ambiguous``, 503 with ``on_store_error = "fail_closed"``) is raised as
        ``SurefootAPIException``, a DRF ``APIException`` with the problem's status and body
        (its ``error`` the ``SurefootError``): DRF answers it, with or without
        ``ProblemMiddleware``. Concurrency
        slots are given back at once: a throttle never sees the response end, so
        concurrency limits need ``RateLimitMiddleware``.

No import of DRF: DRF calls throttles by duck typing, so this class works without
``rest_framework`` imported (or its settings read) until a view uses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

from surefoot.django._responses import request_of
from surefoot.django._settings import cached
from surefoot.django.middleware import HEADERS_ATTRIBUTE
from surefoot.errors import ConfigurationError, SurefootError
from surefoot.ratelimit import RateLimitPolicy
from surefoot.wsgi import RateLimitGuard, Response, problem_response

__all__ = ["SurefootThrottle"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_RATELIMIT = ("ratelimit", "x-ratelimit")
#: The longest wait of the refusals left on the request (Rule 2).
_REFUSED = "_surefoot_ratelimit_refused"


class SurefootThrottle:
    """A DRF throttle class: ``throttle_classes = [SurefootThrottle]``.

    Example:
        >>> class ChargeThrottle(SurefootThrottle):
        ...     rate = "10/minute"
        >>> class Charges(APIView):
        ...     throttle_classes = [ChargeThrottle]

    Attributes:
        rate: limits of this class's own (``"10/minute"`` or a list of them).
        policy: else a policy of ``settings.SUREFOOT`` by name.
        name: the policy name of ``rate`` (default ``drf.`` and the class name).
        algorithm: the algorithm of ``rate``.
    """

    rate: ClassVar[str | Sequence[str] | None] = None
    policy: ClassVar[str | None] = None
    name: ClassVar[str | None] = None
    algorithm: ClassVar[str] = "sliding_window"

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Any, view: Any) -> bool:
        """Whether ``request`` is within its limits (DRF's contract)."""
        guard = self._guard(view)
        if guard is None:
            return True
        req = request_of(request, body=False)
        try:
            checked = guard.check(req)
        except ConfigurationError:
            raise
        except SurefootError as exc:  # Rule 4: CredentialsAmbiguous...
            raise _problem(exc, problem_response(exc, req)) from None
        django_request = getattr(request, "_request", request)
        if checked is None:
            return True
        if isinstance(checked, Response):
            error = checked.error
            if error is None or error.status != 429:  # Rule 4
                raise _problem(error or SurefootError(), checked)
            retry = next((v for k, v in checked.headers if k.lower() == "retry-after"), None)
            self._wait = float(retry) if retry is not None else None
            wait = self._wait or 0.0
            if wait >= getattr(django_request, _REFUSED, -1.0):
                setattr(django_request, _REFUSED, wait)
                _leave(django_request, [(k, v) for k, v in checked.headers if _is_rate_limit(k)])
            return False
        verdict = checked
        if not hasattr(django_request, _REFUSED):
            _leave(
                django_request,
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in verdict.headers],
            )
        guard.release(verdict)  # Rule 4
        return True

    def wait(self) -> float | None:
        """Seconds until the refused request would be admitted (its ``Retry-After``)."""
        return self._wait

    def get_ident(self, request: Any) -> str:
        """The principal the limits count (DRF's hook, for logs)."""
        from surefoot.django._settings import surefoot_settings

        scope = request_of(request, body=False).scope
        return surefoot_settings().identity.rate_limit_principal(scope)

    def _guard(self, view: Any) -> RateLimitGuard | None:
        cls = type(self)
        if cls.rate is not None:
            key: tuple[object, ...] = ("drf", cls)
        else:
            chosen = cls.policy or getattr(view, "throttle_scope", None)
            key = ("drf", cls, chosen)

        def build(settings: Any) -> RateLimitGuard | None:
            policies: list[RateLimitPolicy]
            if cls.rate is not None:
                limits = [cls.rate] if isinstance(cls.rate, str) else list(cls.rate)
                name = cls.name or _UNSAFE.sub("_", f"drf.{cls.__qualname__}")
                policies = [RateLimitPolicy(name, limits=limits, algorithm=cls.algorithm)]
            else:
                chosen = key[2]
                policies = list(settings.rate_limit_policies)
                if chosen is not None:
                    policies = [p for p in policies if p.name == chosen]
                    if not policies:
                        names = [p.name for p in settings.rate_limit_policies]
                        raise ConfigurationError(
                            f"{cls.__qualname__}: policy {chosen!r} is not in settings.SUREFOOT's "
                            f"rate_limit.policies (they are {names})"
                        )
                if not policies:
                    return None
            guard: RateLimitGuard | None = settings.rate_limit_guard(policies=policies)
            return guard

        return cached(key, build)


def _is_rate_limit(name: str) -> bool:
    return name.lower().startswith(_RATELIMIT)


def _leave(request: Any, headers: list[tuple[str, str]]) -> None:
    """Leave the fields for ``RateLimitHeadersMiddleware`` (Rule 2)."""
    setattr(request, HEADERS_ATTRIBUTE, headers)


def _problem(error: SurefootError, response: Response) -> Exception:
    """``error`` as a ``SurefootAPIException`` DRF answers with ``response``'s status and
    problem body (Rule 4)."""
    import json

    body = response.body if isinstance(response.body, bytes) else b"{}"
    exception: Exception = _exception_class()(error, json.loads(body or b"{}"), response.status)
    return exception


@cache
def _exception_class() -> type[Exception]:
    """``SurefootAPIException``, made on first use (no import of DRF before)."""
    from rest_framework.exceptions import APIException

    class SurefootAPIException(APIException):  # type: ignore[misc]
        """A surefoot refusal a throttle raised: ``status_code``, ``detail`` (the problem
        body) and ``error`` (the ``SurefootError``)."""

        def __init__(self, error: SurefootError, body: dict[str, Any], status: int) -> None:
            super().__init__()
            self.detail = body
            self.status_code = status
            self.error = error

    SurefootAPIException.__module__ = __name__
    return SurefootAPIException
