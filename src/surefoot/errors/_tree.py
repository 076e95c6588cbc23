"""The surefoot exception tree and its problem catalogue.

Every error surefoot raises derives from one root, split by whose fault it is, and each
class is also an entry of the RFC 9457 problem catalogue: its ``code``, ``status``,
``title`` and a ``detail`` template that tells the client what to do next::

    SurefootError                          500  internal_error
    ├── ClientError                        400  (the request must change)
    │   ├── IdempotencyKeyMissing          400  idempotency_key_missing
    │   ├── IdempotencyKeyInvalid          400  idempotency_key_invalid
    │   ├── IdempotencyKeyAmbiguous        400  idempotency_key_ambiguous
    │   ├── RequestBodyTooLarge            413  request_body_too_large
    │   ├── BadRequest                     400  bad_request
    │   ├── InvalidPath                    400  invalid_path
    │   ├── CredentialsAmbiguous           400  credentials_ambiguous
    │   ├── UpgradeNotSupported            400  upgrade_not_supported
    │   ├── RequestTimeout                 408  request_timeout
    │   ├── RequestHeadersTooLarge         431  request_headers_too_large
    │   ├── IdempotencyRecordsExceeded     429  idempotency_records_exceeded
    │   ├── IdempotencyKeyReused           422  idempotency_key_reused
    │   ├── IdempotencyRequestInProgress   409  idempotency_request_in_progress
    │   ├── IdempotencyOutcomeUnknown      409  idempotency_outcome_unknown
    │   ├── IdempotencyResponseNotStored   409  idempotency_response_not_stored
    │   ├── RateLimitExceeded              429  rate_limit_exceeded
    │   ├── QuotaExceeded                  429  quota_exceeded
    │   ├── ConcurrencyLimitExceeded       429  concurrency_limit_exceeded
    │   ├── AccessDenied                   403  access_denied
    │   ├── ChallengeRequired              429  challenge_required
    │   ├── AbuseLimitExceeded             429  abuse_limit_exceeded
    │   ├── AccountAmbiguous               400  account_ambiguous
    │   ├── RouteRetired                   410  route_retired
    │   ├── VersionUnknown                 400  version_unknown
    │   ├── AdminBadRequest                400  admin_bad_request
    │   ├── AdminUnauthorized              401  admin_unauthorized
    │   ├── AdminNotFound                  404  admin_not_found
    │   ├── ConfigRejected                 422  config_rejected
    │   ├── WebhookObjectBusy              409  webhook_object_busy
    │   ├── SagaActionRefused              409  saga_action_refused
    │   └── WebhookRejected                400  (an inbound webhook failed verification)
    │       ├── WebhookSignatureMissing    400  webhook_signature_missing
    │       ├── WebhookSignatureMalformed  400  webhook_signature_malformed
    │       ├── WebhookSignatureUnsupported 400 webhook_signature_unsupported
    │       ├── WebhookSignatureMismatch   401  webhook_signature_mismatch
    │       ├── WebhookTimestampExpired    401  webhook_timestamp_expired
    │       ├── WebhookTimestampInFuture   401  webhook_timestamp_in_future
    │       ├── WebhookBodyNotJson         400  webhook_body_not_json
    │       ├── WebhookEventIdInvalid      400  webhook_event_id_invalid
    │       └── WebhookEventFieldInvalid   400  webhook_event_field_invalid
    ├── BackendError                       503  (a store or an upstream failed; retrying is safe)
    │   ├── StoreUnavailable               503  store_unavailable
    │   ├── StoreCapacityExceeded          503  store_capacity_exceeded
    │   ├── AbuseEntriesFull               507  abuse_entries_full
    │   ├── ServiceOverloaded              503  service_overloaded
    │   └── UpstreamError                  502  (an outbound call failed)
    │       ├── UpstreamUnavailable        502  upstream_unavailable
    │       ├── UpstreamTimeout            504  upstream_timeout
    │       ├── CircuitOpen                503  circuit_open
    │       └── UpstreamThrottled          503  upstream_throttled
    └── ConfigurationError                 500  configuration_error

Rule 1: a ``detail`` is formatted only from the keyword arguments the raiser passes and
never from another exception's text, so a store's error message or a stack trace can
never reach a client (the cause is kept on ``__cause__`` for logs).
Rule 2: ``code`` values are stable API: a client may branch on them; never rename one.
Rule 3: abstract branches (``ClientError``, ``BackendError``) have no code of their own
and are not catalogue entries; only leaves and the root are.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar

__all__ = [
    "AbuseEntriesFull",
    "AbuseLimitExceeded",
    "AccessDenied",
    "AccountAmbiguous",
    "ChallengeRequired",
    "RouteRetired",
    "VersionUnknown",
    "AdminBadRequest",
    "BadRequest",
    "CredentialsAmbiguous",
    "IdempotencyRecordsExceeded",
    "InvalidPath",
    "RequestHeadersTooLarge",
    "RequestTimeout",
    "UpgradeNotSupported",
    "AdminNotFound",
    "AdminUnauthorized",
    "BackendError",
    "ClientError",
    "ConcurrencyLimitExceeded",
    "ConfigRejected",
    "ConfigurationError",
    "IdempotencyKeyAmbiguous",
    "IdempotencyKeyInvalid",
    "IdempotencyKeyMissing",
    "IdempotencyKeyReused",
    "IdempotencyOutcomeUnknown",
    "IdempotencyRequestInProgress",
    "IdempotencyResponseNotStored",
    "QuotaExceeded",
    "RateLimitExceeded",
    "RequestBodyTooLarge",
    "ServiceOverloaded",
    "CircuitOpen",
    "StoreCapacityExceeded",
    "StoreUnavailable",
    "SurefootError",
    "UpstreamError",
    "UpstreamThrottled",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "WebhookObjectBusy",
    "WebhookRejected",
    "WebhookSignatureMissing",
    "WebhookSignatureMalformed",
    "WebhookSignatureUnsupported",
    "WebhookSignatureMismatch",
    "WebhookTimestampExpired",
    "WebhookTimestampInFuture",
    "WebhookBodyNotJson",
    "WebhookEventIdInvalid",
    "WebhookEventFieldInvalid",
]


class SurefootError(Exception):
    """Root of every surefoot error; unexpected failures map to ``internal_error``.

    Subclasses set ``code``, ``status``, ``title`` and ``detail_template``; the
    keyword arguments given at construction fill the template and become the
    problem's extension members (``retry_after``, ``policy``...).
    """

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    detail_template: ClassVar[str] = (
        "The server failed while handling the request. Retrying may help; "
        "quote the request_id when you contact support."
    )
    #: Whether a client may retry the very same request (same key) and expect progress.
    retryable: ClassVar[bool] = True
    #: Extension members that are for the detail text only and never sent as fields.
    private_fields: ClassVar[frozenset[str]] = frozenset()
    #: False on abstract branches, which are not catalogue entries.
    in_catalogue: ClassVar[bool] = True

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        self.detail = self._format_detail(fields)
        super().__init__(message or self.detail)

    @classmethod
    def _format_detail(cls, fields: dict[str, Any]) -> str:
        values = dict(fields)
        if "retry_after" in values:  # "in 1 second", "in 3 seconds": for the text only
            wait = values["retry_after"]
            values.setdefault("retry_wait", "1 second" if wait == 1 else f"{wait} seconds")
        names = {name for _, name, _, _ in string.Formatter().parse(cls.detail_template) if name}
        missing = {"retry_after" if n == "retry_wait" else n for n in names - values.keys()}
        if missing:
            raise TypeError(f"{cls.__name__} needs {sorted(missing)} to format its detail")
        return cls.detail_template.format(**values)

    @property
    def extensions(self) -> dict[str, Any]:
        """Members added to the problem document beside the RFC 9457 ones."""
        return {k: v for k, v in self.fields.items() if k not in self.private_fields}

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.in_catalogue = not abstract


class ClientError(SurefootError, abstract=True):
    """The request itself must change (or wait) before it can succeed."""

    status = 400
    retryable = False


class BackendError(SurefootError, abstract=True):
    """A dependency (a store, an upstream) failed; nothing was executed, retrying is safe."""

    status = 503
    retryable = True


class ConfigurationError(SurefootError):
    """Invalid configuration: raised at construction, never while serving a request."""

    code = "configuration_error"
    status = 500
    title = "Server misconfigured"
    detail_template = (
        "The server is misconfigured and cannot handle this request. "
        "Nothing was executed; contact the API operator."
    )
    retryable = False


class IdempotencyKeyMissing(ClientError):
    """A request that needs an idempotency key came without one."""

    code = "idempotency_key_missing"
    title = "Idempotency key required"
    detail_template = (
        "{method} {path} requires an {header} header. Generate a unique key "
        "(for example a UUID v4) for each logical operation and send the same key on every retry."
    )


class IdempotencyKeyInvalid(ClientError):
    """The idempotency key is empty, longer than 255 characters, not printable ASCII, or
    sent twice with different values."""

    code = "idempotency_key_invalid"
    title = "Idempotency key malformed"
    detail_template = (
        "The {header} header is invalid: {reason}. Send one key of 1 to 255 printable ASCII "
        "characters, for example a UUID v4."
    )


class IdempotencyKeyAmbiguous(ClientError):
    """The header and the configured body field carry different idempotency keys."""

    code = "idempotency_key_ambiguous"
    title = "Idempotency keys disagree"
    detail_template = (
        "The {header} header and the body field '{field}' carry different idempotency keys. "
        "Send one key, or the same key in both places."
    )


class RequestBodyTooLarge(ClientError):
    """The request body is larger than the middleware buffers to fingerprint it."""

    code = "request_body_too_large"
    status = 413
    title = "Request body too large"
    detail_template = (
        "The request body exceeds {limit} bytes, the most this endpoint accepts. "
        "Nothing was executed; send a smaller body."
    )


class BadRequest(ClientError):
    """The request is not well-formed HTTP/1.1 (a bad method or target, control characters,
    a missing or repeated ``Host``); nothing was executed."""

    code = "bad_request"
    title = "Malformed request"
    detail_template = "The request is not valid HTTP: {reason}. Nothing was executed."


class InvalidPath(ClientError):
    """The request path has a form the server refuses rather than guess at (an encoded
    slash, a ``;`` parameter, a dot segment above the root, control characters)."""

    code = "invalid_path"
    title = "Path not accepted"
    detail_template = (
        "The request path is not accepted: {reason}. Nothing was executed; send the path "
        "in its plain form."
    )


class CredentialsAmbiguous(ClientError):
    """The request carries a credential header more than once, several credentials in one
    ``Authorization``, or different credentials in two headers; nothing was executed."""

    code = "credentials_ambiguous"
    title = "Credentials ambiguous"
    detail_template = (
        "The request's credentials are ambiguous: {reason}. Nothing was executed; send one "
        "credential, in one header field."
    )


class UpgradeNotSupported(ClientError):
    """The request asks to switch protocols (a WebSocket upgrade), which this server does
    not do; nothing was executed."""

    code = "upgrade_not_supported"
    title = "Protocol upgrade not supported"
    detail_template = (
        "This server does not switch protocols ({protocol}). Nothing was executed; send a "
        "plain HTTP request."
    )


class RequestTimeout(ClientError):
    """The client took too long to send its request (headers or body); nothing was
    executed."""

    code = "request_timeout"
    status = 408
    title = "Request not received in time"
    detail_template = (
        "The server stopped waiting for the request: {reason}. Nothing was executed; "
        "send the whole request promptly."
    )
    retryable = True


class RequestHeadersTooLarge(ClientError):
    """The request's header fields are too many or too large; nothing was executed."""

    code = "request_headers_too_large"
    status = 431
    title = "Request header fields too large"
    detail_template = (
        "The request's header fields exceed what the server accepts: {reason}. "
        "Nothing was executed."
    )


class IdempotencyKeyReused(ClientError):
    """The key was used before with a different method, path, query or body."""

    code = "idempotency_key_reused"
    status = 422
    title = "Idempotency key reused with a different request"
    detail_template = (
        "This idempotency key was already used for a different request "
        "(method, path or body differ). Nothing was executed. Retry the original request "
        "unchanged, or use a new key for a new operation."
    )


class IdempotencyRequestInProgress(ClientError):
    """Another request with the same key is executing right now."""

    code = "idempotency_request_in_progress"
    status = 409
    title = "Request with this idempotency key in progress"
    detail_template = (
        "A request with this idempotency key is still being processed. "
        "Retry the same request with the same key in {retry_wait} to receive its result."
    )
    retryable = True


class IdempotencyOutcomeUnknown(ClientError):
    """The request with this key failed or was abandoned in a way that may have done the
    work; an operator (or a lookup) must settle it before anything runs again."""

    code = "idempotency_outcome_unknown"
    status = 409
    title = "Outcome of the original request not yet known"
    detail_template = (
        "The original request with this idempotency key may or may not have taken effect, "
        "and it will not be executed again until its outcome is resolved. "
        "Retrying with the same key is safe: you will receive the final result once it is known."
    )
    retryable = True


class IdempotencyResponseNotStored(ClientError):
    """The request with this key executed, but its response was larger than the replay
    limit."""

    code = "idempotency_response_not_stored"
    status = 409
    title = "Original response too large to replay"
    detail_template = (
        "The request with this idempotency key was executed, but its response was too large "
        "to store for replay. Do not retry it; fetch the resulting resource instead."
    )


class RateLimitExceeded(ClientError):
    """The client went over a rate limit; nothing was executed."""

    code = "rate_limit_exceeded"
    status = 429
    title = "Rate limit exceeded"
    detail_template = "You have exceeded {limit} for policy '{policy}'. Try again in {wait}."
    retryable = True
    private_fields = frozenset({"limit", "wait"})


class QuotaExceeded(ClientError):
    """The client used up a daily or monthly quota; nothing was executed."""

    code = "quota_exceeded"
    status = 429
    title = "Quota exceeded"
    detail_template = (
        "You have used your quota of {limit} for policy '{policy}'. It renews in {wait}."
    )
    retryable = True
    private_fields = frozenset({"limit", "wait"})


class ConcurrencyLimitExceeded(ClientError):
    """The client has as many requests in flight as it may; nothing was executed."""

    code = "concurrency_limit_exceeded"
    status = 429
    title = "Too many concurrent requests"
    detail_template = (
        "You already have {limit} for policy '{policy}'. "
        "Wait for one to finish, then try again in {wait}."
    )
    retryable = True
    private_fields = frozenset({"limit", "wait"})


class AccessDenied(ClientError):
    """The request was refused by a ban (its address, network, credential or account);
    nothing was executed. Deliberately says nothing of why or for how long: that would
    tell an attacker what to rotate and when to come back."""

    code = "access_denied"
    status = 403
    title = "Access denied"
    detail_template = (
        "This request was refused. Nothing was executed; if you think this is a mistake, "
        "contact the API's operator and quote the request_id."
    )


class ChallengeRequired(ClientError):
    """The client's traffic looks suspicious (failed attempts, a sudden surge): it must pass
    the operator's challenge before it goes on; nothing was executed."""

    code = "challenge_required"
    status = 429
    title = "Challenge required"
    detail_template = (
        "Complete the challenge at {challenge}, then try again in {retry_wait}. "
        "Nothing was executed."
    )
    retryable = True


class AbuseLimitExceeded(ClientError):
    """The client's traffic rose far above its usual rate and it is held to a temporary
    lower limit; nothing was executed."""

    code = "abuse_limit_exceeded"
    status = 429
    title = "Temporarily limited"
    detail_template = (
        "Your request rate is far above its usual level, so it is temporarily limited. "
        "Nothing was executed; slow down and try again in {retry_wait}."
    )
    retryable = True


class AccountAmbiguous(ClientError):
    """A login names the account it tries more than once (a form field, a query parameter,
    a JSON key or a header repeated with different values); nothing was executed. Which
    one the app would log into is not ours to guess, and guessing differently from it is
    how an attacker would try one account while another is counted."""

    code = "account_ambiguous"
    title = "Account ambiguous"
    detail_template = (
        "The request names the account it tries more than once ({source}). Nothing was "
        "executed; name it once."
    )


class RouteRetired(ClientError):
    """The route is past its sunset (RFC 8594), or in a brownout before it: a scheduled
    window in which it answers as it will after the sunset, so that integrations still
    calling it notice in time. Nothing was executed."""

    code = "route_retired"
    status = 410
    title = "Route retired"
    detail_template = "{method} {route} {state}. Nothing was executed; {advice}"
    private_fields = frozenset({"state", "advice"})


class VersionUnknown(ClientError):
    """The request asks for an API version the service does not have; nothing was
    executed."""

    code = "version_unknown"
    title = "API version unknown"
    detail_template = (
        "{header}: {version!r} is not a version of this API. Nothing was executed; send one "
        "of {versions}, or no {header} to use your account's pinned version."
    )
    private_fields = frozenset({"versions"})


class IdempotencyRecordsExceeded(ClientError):
    """The client holds as many stored idempotency records (or records of unknown outcome)
    as it may; nothing was executed."""

    code = "idempotency_records_exceeded"
    status = 429
    title = "Too many idempotency records"
    detail_template = (
        "You already hold {limit} live idempotency records ({kind}), the most one client may "
        "keep. Nothing was executed; retry in {retry_wait}, once older records expire or "
        "are settled."
    )
    retryable = True
    private_fields = frozenset({"limit", "kind"})


class StoreUnavailable(BackendError):
    """The state store failed or timed out; the request was not executed."""

    code = "store_unavailable"
    title = "Service temporarily unavailable"
    detail_template = (
        "The service could not reach its state store, so nothing was executed. "
        "Retry the same request (with the same idempotency key) in {retry_wait}."
    )


class AbuseEntriesFull(BackendError):
    """The store holds as many bans, allows, limits and challenges as it may in the shard
    of this subject (10,000 live slots per board, 64 boards); nothing was changed."""

    code = "abuse_entries_full"
    status = 507
    title = "Abuse entries full"
    detail_template = (
        "The store holds as many abuse entries as it may next to this one, so nothing was "
        "changed. Remove entries that are no longer needed, or shorten the failure rules' "
        "forget_after (lifted and expired bans are kept that long as history)."
    )
    retryable = False


class StoreCapacityExceeded(BackendError):
    """The in-memory store is full of records it must keep; nothing was executed.

    They are in flight, of unknown outcome, or completed and inside their TTL (which
    ``MemoryStore`` keeps by default); ``retry_after`` is the time until the first expires.
    """

    code = "store_capacity_exceeded"
    title = "Service temporarily overloaded"
    detail_template = (
        "The service is tracking as many requests as it can, so nothing was executed. "
        "Retry the same request in {retry_wait}."
    )


class ServiceOverloaded(BackendError):
    """The gateway is at its concurrency limit for this kind of request; nothing was sent."""

    code = "service_overloaded"
    title = "Service temporarily overloaded"
    detail_template = (
        "The service is handling as many requests as it can, so this one was not executed. "
        "Retry the same request in {retry_wait}."
    )


class UpstreamError(BackendError, abstract=True):
    """An outbound call to another service failed (raised by ``surefoot.client``).

    The client sets the attempt history on the exception (never in a problem document):
    ``attempts`` made, each one's ``failures``, why it ``stopped``, and the last
    ``response`` if there was one.
    """

    status = 502
    attempts: int = 0
    failures: tuple[str, ...] = ()
    stopped: str = ""
    response: Any = None


class UpstreamUnavailable(UpstreamError):
    """The upstream failed on every attempt, or retrying it was not safe."""

    code = "upstream_unavailable"
    title = "Upstream service unavailable"
    detail_template = "A service this request depends on failed ({reason}). {advice}"
    private_fields = frozenset({"advice"})


class UpstreamTimeout(UpstreamError):
    """The outbound call ran out of time (its deadline, or a wait longer than the deadline)."""

    code = "upstream_timeout"
    status = 504
    title = "Upstream service timed out"
    detail_template = (
        "A service this request depends on did not answer in time ({reason}). {advice}"
    )
    private_fields = frozenset({"advice"})


class CircuitOpen(UpstreamError):
    """Calls to the upstream are suspended by a circuit breaker after repeated failures."""

    code = "circuit_open"
    status = 503
    title = "Upstream service suspended"
    detail_template = (
        "Calls to '{integration}' are suspended after repeated failures; nothing was sent. "
        "Retry in {retry_wait}."
    )


class UpstreamThrottled(UpstreamError):
    """The outbound rate or concurrency cap for the upstream was reached; nothing was sent."""

    code = "upstream_throttled"
    status = 503
    title = "Upstream capacity reached"
    detail_template = (
        "Requests to '{integration}' are at their agreed limit ({limit}); nothing was sent. "
        "Retry in {retry_wait}."
    )
    private_fields = frozenset({"limit"})


class AdminBadRequest(ClientError):
    """An admin API request with missing or malformed parameters."""

    code = "admin_bad_request"
    title = "Malformed admin request"
    detail_template = "The admin request is malformed: {reason}."


class AdminUnauthorized(ClientError):
    """An admin API request without the right bearer token."""

    code = "admin_unauthorized"
    status = 401
    title = "Admin token required"
    detail_template = (
        "The admin API needs the header 'Authorization: Bearer <token>' with the configured token."
    )


class AdminNotFound(ClientError):
    """The admin API has no such endpoint, or the record asked for does not exist."""

    code = "admin_not_found"
    status = 404
    title = "Not found"
    detail_template = "{what} was not found."


class ConfigRejected(ClientError):
    """A new policy file (a reload) was refused; the configuration in force stays."""

    code = "config_rejected"
    status = 422
    title = "Configuration refused"
    detail_template = "The new configuration was refused and the one in force stays: {problems}"


class WebhookObjectBusy(ClientError):
    """Another event about the same object is being processed; this one waits its turn."""

    code = "webhook_object_busy"
    status = 409
    title = "Another event about this object is in progress"
    detail_template = (
        "Another event about the same object is being processed, and events about one object "
        "are handled one at a time so that an older one never overwrites a newer one. "
        "Nothing was executed; retry in {retry_wait}."
    )
    retryable = True


class SagaActionRefused(ClientError):
    """A person's action on a saga (retry, compensate, resolve) does not apply to the
    state it is in; nothing was changed."""

    code = "saga_action_refused"
    status = 409
    title = "Action not possible in the saga's state"
    detail_template = "Nothing was changed: {reason}."


class WebhookRejected(ClientError, abstract=True):
    """An inbound webhook failed verification; nothing was stored or handed to the app.

    The detail names the header or field at fault, never the body or a secret. A sender
    retries any non-2xx answer, so a rejection caused by a wrong secret here shows up as
    retries in the sender's dashboard until the secret is fixed.
    """


class WebhookSignatureMissing(WebhookRejected):
    """A header the endpoint's signature scheme needs is absent (or sent twice)."""

    code = "webhook_signature_missing"
    title = "Webhook signature missing"
    detail_template = "The webhook has no usable {header} header, which the {scheme} scheme needs."


class WebhookSignatureMalformed(WebhookRejected):
    """A signature or timestamp header cannot be parsed."""

    code = "webhook_signature_malformed"
    title = "Webhook signature malformed"
    detail_template = "The {header} header is malformed: {reason}."


class WebhookSignatureUnsupported(WebhookRejected):
    """The signature header carries only signature versions this endpoint does not check."""

    code = "webhook_signature_unsupported"
    title = "Webhook signature version not supported"
    detail_template = (
        "The {header} header carries no signature of a version this endpoint checks "
        "({expected}); it has {found}."
    )


class WebhookSignatureMismatch(WebhookRejected):
    """No signature of the header matches the body under any of the endpoint's secrets."""

    code = "webhook_signature_mismatch"
    status = 401
    title = "Webhook signature does not match"
    detail_template = (
        "No signature in the {header} header matches the body with this endpoint's secrets. "
        "Check the signing secret, and that nothing between sender and receiver changed the body."
    )


class WebhookTimestampExpired(WebhookRejected):
    """The signed timestamp is older than the scheme's tolerance: a replayed delivery."""

    code = "webhook_timestamp_expired"
    status = 401
    title = "Webhook timestamp too old"
    detail_template = (
        "The webhook was signed {age} seconds ago, more than the {tolerance} seconds "
        "this endpoint accepts."
    )


class WebhookTimestampInFuture(WebhookRejected):
    """The signed timestamp is further in the future than the scheme's tolerance."""

    code = "webhook_timestamp_in_future"
    status = 401
    title = "Webhook timestamp in the future"
    detail_template = (
        "The webhook's timestamp is {ahead} seconds ahead of this server's clock, more than "
        "the {tolerance} seconds this endpoint accepts. Check the sender's clock."
    )


class WebhookBodyNotJson(WebhookRejected):
    """The endpoint reads the event id or an ordering field from the body, which is not JSON."""

    code = "webhook_body_not_json"
    title = "Webhook body is not JSON"
    detail_template = (
        "The webhook body is not a JSON object, and this endpoint reads {field} from it."
    )


class WebhookEventIdInvalid(WebhookRejected):
    """The event id is missing, empty, longer than 255 bytes or not printable ASCII."""

    code = "webhook_event_id_invalid"
    title = "Webhook event id invalid"
    detail_template = (
        "The webhook's event id ({source}) is {reason}; it must be 1 to 255 printable "
        "ASCII characters."
    )


class WebhookEventFieldInvalid(WebhookRejected):
    """An ordering field (object id, version) is missing or of the wrong type."""

    code = "webhook_event_field_invalid"
    title = "Webhook event field invalid"
    detail_template = "The webhook's field {field} is {reason}; expected {expected}."
