"""Webhook signatures, verified on the raw bytes: Standard Webhooks (and Svix), Stripe,
GitHub and a generic HMAC, each a ``Scheme`` whose ``verify(headers, body, now)`` returns
a ``Verified`` or raises one ``WebhookRejected`` of the catalogue::

    headers, body, now
         │ read (Rule 5) ──► WebhookSignatureMissing · WebhookSignatureMalformed
         │ parse (Rules 4, 6) ──► WebhookSignatureMalformed · WebhookSignatureUnsupported
         │ signature (Rules 1-3) ──► WebhookSignatureMismatch
         │ timestamp (Rule 3) ──► WebhookTimestampExpired · WebhookTimestampInFuture
         ▼
    Verified(scheme, event_id, timestamp)

Rule 1: raw bytes only. The signed content is made of the body exactly as received and of
        the header values exactly as sent (a value is the wire bytes decoded as Latin-1, as
        ASGI servers do, so it is encoded back as Latin-1); nothing is parsed and
        re-serialised, and a timestamp is signed as the digits sent, never as a number.
Rule 2: every signature comparison is ``hmac.compare_digest`` over the decoded digests (an
        Ed25519 signature is checked by ``cryptography``). A header may carry several
        signatures and an endpoint several secrets (key rotation): one match is enough.
Rule 3: the signature is checked before the timestamp's age. The timestamp is parsed first
        (it is part of the signed content), but only a delivery the sender really signed is
        told that it is too old or too new: a forgery is a mismatch whatever timestamp it
        carries, so ``webhook_timestamp_expired`` means a genuine delivery replayed or a
        clock out of step, never an attacker's guess, and the detail "signed N seconds
        ago" is true. A timestamp is accepted when ``now - tolerance <= t <= now +
        tolerance`` (both bounds inclusive); older is expired, newer is in the future.
Rule 4: everything read is bounded: a header value has at most ``MAX_HEADER_LENGTH``
        characters, a header at most ``MAX_SIGNATURES`` entries, a timestamp 1 to
        ``MAX_TIMESTAMP_DIGITS`` ASCII digits (no sign, no decimals), a version label 1 to
        16 letters, digits, ``_`` or ``-``. Beyond a bound the header is malformed. An
        endpoint has 1 to ``MAX_SECRETS`` secrets, so a request costs at most
        ``MAX_SIGNATURES * MAX_SECRETS`` signature checks.
Rule 5: a header absent or blank is missing (``WebhookSignatureMissing``); the adapter
        refuses one sent twice (``Scheme.header_names`` lists every header a scheme reads).
Rule 6: any input is either verified or refused with a ``WebhookRejected``: bad base64,
        bad hex, a missing ``t=``, characters no header can carry are
        ``WebhookSignatureMalformed``, never a ``ValueError`` or ``IndexError``. A signature
        of a version the endpoint has no secret for is skipped; when none is left the
        header is ``WebhookSignatureUnsupported``. No detail quotes a secret or the body.
Rule 7: pure: no I/O, no clock (``now`` is a parameter), no randomness. Secrets are checked
        at construction (``ConfigurationError`` naming the class and field, never the
        value) and kept out of every repr.
"""

from __future__ import annotations

import base64
import hmac
import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NoReturn, Protocol, TypeAlias, runtime_checkable

from surefoot._masking import shown
from surefoot.errors import (
    ConfigurationError,
    WebhookSignatureMalformed,
    WebhookSignatureMismatch,
    WebhookSignatureMissing,
    WebhookSignatureUnsupported,
    WebhookTimestampExpired,
    WebhookTimestampInFuture,
)

__all__ = [
    "MAX_HEADER_LENGTH",
    "MAX_SECRETS",
    "MAX_SIGNATURES",
    "MAX_TIMESTAMP_DIGITS",
    "GitHub",
    "Headers",
    "Hmac",
    "Scheme",
    "StandardWebhooks",
    "Stripe",
    "Verified",
]

#: Lower-case header names to values; the adapter passes each header once (Rule 5).
Headers: TypeAlias = Mapping[str, str]

MAX_HEADER_LENGTH = 8192
MAX_SIGNATURES = 32
MAX_TIMESTAMP_DIGITS = 12
MAX_SECRETS = 16

_DAY = 86_400.0
_TIMESTAMP = re.compile(rf"[0-9]{{1,{MAX_TIMESTAMP_DIGITS}}}")
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,16}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110)
_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True, slots=True)
class Verified:
    """A delivery whose signature matched and whose timestamp (if any) is in tolerance."""

    #: ``"standard_webhooks"``, ``"stripe"``, ``"github"`` or ``"hmac"``.
    scheme: str
    #: The event id the headers carry (``webhook-id`` / ``svix-id``, ``X-GitHub-Delivery``,
    #: ``Hmac.id_header``), else None (Stripe's is the body's ``id``: ``event_id_field``).
    event_id: str | None
    #: The signed timestamp (Unix seconds), if the scheme has one.
    timestamp: float | None


@runtime_checkable
class Scheme(Protocol):
    """What every signature scheme is (read-only members, so frozen dataclasses fit).

    ``name`` is the scheme's name in ``Verified.scheme``; ``header_names`` every lower-case
    header it may read (the adapter refuses a repeated one); ``event_id_field`` the dotted
    body field holding the event id when the headers carry none (Stripe: ``"id"``);
    ``carries_id`` whether ``Verified.event_id`` comes from the headers (Hmac: with an
    ``id_header``);
    ``tolerance`` the accepted clock distance in seconds, both directions, None when the
    scheme signs no timestamp; ``horizon`` how long, in seconds, the sender may deliver one
    event again (automatic retries plus manual replays, from its docs), None when unknown.
    """

    @property
    def name(self) -> str: ...
    @property
    def header_names(self) -> frozenset[str]: ...
    @property
    def event_id_field(self) -> str | None: ...
    @property
    def carries_id(self) -> bool: ...
    @property
    def tolerance(self) -> float | None: ...
    @property
    def horizon(self) -> float | None: ...

    def verify(self, headers: Headers, body: bytes, now: float) -> Verified:
        """The verified delivery, or a ``WebhookRejected`` raised."""
        ...


# --- reading headers (Rules 4-6) ---------------------------------------------------


def _read(headers: Headers, name: str, shown_as: str, scheme: str) -> str:
    value = _read_optional(headers, name, shown_as)
    if value is None:
        raise WebhookSignatureMissing(header=shown_as, scheme=scheme)
    return value


def _read_optional(headers: Headers, name: str, shown_as: str) -> str | None:
    value = headers.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_HEADER_LENGTH:
        _malformed(shown_as, f"it is longer than {MAX_HEADER_LENGTH} characters")
    return value


def _malformed(header: str, reason: str) -> NoReturn:
    raise WebhookSignatureMalformed(header=header, reason=reason)


def _wire(value: str, header: str) -> bytes:
    """The header's bytes as sent (Rule 1)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        _malformed(header, "it holds characters beyond Latin-1, which no HTTP header carries")


def _timestamp(value: str, header: str) -> bytes:
    if _TIMESTAMP.fullmatch(value) is None:
        _malformed(header, f"the timestamp is not 1 to {MAX_TIMESTAMP_DIGITS} digits")
    return value.encode("ascii")


def _entries(parts: list[str], header: str) -> list[str]:
    if not parts:
        _malformed(header, "it holds no signature")
    if len(parts) > MAX_SIGNATURES:
        _malformed(header, f"it holds more than {MAX_SIGNATURES} entries")
    return parts


def _label(value: str, header: str) -> str:
    if _LABEL.fullmatch(value) is None:
        _malformed(header, "an entry's version is not 1 to 16 letters, digits, '_' or '-'")
    return value


def _hex(value: str, header: str) -> bytes:
    if _HEX.fullmatch(value) is None:
        _malformed(header, "a signature is not hexadecimal")
    return bytes.fromhex(value)


def _base64(value: str, header: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        _malformed(header, "a signature is not base64")


def _check_age(signed: bytes, now: float, tolerance: float) -> float:
    """The signed timestamp, once within ``tolerance`` of ``now`` both ways (Rule 3)."""
    timestamp = float(int(signed))
    age = now - timestamp
    if age > tolerance:
        raise WebhookTimestampExpired(age=math.ceil(age), tolerance=_seconds(tolerance))
    if -age > tolerance:
        raise WebhookTimestampInFuture(ahead=math.ceil(-age), tolerance=_seconds(tolerance))
    return timestamp


def _seconds(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _matches(expected: bytes, signatures: list[bytes]) -> bool:
    return any(hmac.compare_digest(expected, given) for given in signatures)


def _mac(key: bytes, content: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(key, content, algorithm).digest()


# --- configuration checks (Rule 7) ---------------------------------------------------


def _fail(owner: str, name: str, expected: str, got: str) -> NoReturn:
    raise ConfigurationError(f"{owner}.{name}: expected {expected}, got {got}")


def _checked_secrets(owner: object, secrets: object) -> tuple[str, ...]:
    cls = type(owner).__name__
    expected = f'a tuple of 1 to {MAX_SECRETS} secrets, as ("whsec_...",)'
    if not isinstance(secrets, tuple | list):
        _fail(cls, "secrets", expected, shown(secrets, secret=True))
    if not 1 <= len(secrets) <= MAX_SECRETS:
        _fail(cls, "secrets", expected, f"{len(secrets)} secrets")
    for index, secret in enumerate(secrets):
        if not isinstance(secret, str) or not secret or secret != secret.strip():
            _fail(
                cls,
                f"secrets[{index}]",
                "a non-empty string without surrounding whitespace",
                shown(secret, secret=True),
            )
    return tuple(secrets)


def _checked_tolerance(owner: object, tolerance: object) -> float:
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, int | float)
        or not math.isfinite(tolerance)
        or tolerance <= 0
    ):
        _fail(type(owner).__name__, "tolerance", "a positive number of seconds", shown(tolerance))
    return float(tolerance)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # a frozen dataclass's derived field


# --- Standard Webhooks ----------------------------------------------------------------


def _ed25519(public_key: bytes) -> Callable[[bytes, bytes], bool]:
    """A checker of Ed25519 signatures by ``public_key`` (needs the ``webhooks`` extra)."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise ConfigurationError(
            "StandardWebhooks.secrets: a whpk_ public key (v1a, Ed25519) needs the "
            "'cryptography' package: pip install 'surefoot[webhooks]'"
        ) from None
    key = Ed25519PublicKey.from_public_bytes(public_key)

    def check(signature: bytes, content: bytes) -> bool:
        try:
            key.verify(signature, content)
        except InvalidSignature:
            return False
        return True

    return check


def _decoded_secret(index: int, text: str) -> bytes:
    encoded = text.split("_", 1)[1] if text.startswith(("whsec_", "whpk_")) else text
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except ValueError:
        raw = b""
    if not raw:
        _fail(
            "StandardWebhooks",
            f"secrets[{index}]",
            "whsec_ or whpk_ followed by base64 (as the sender shows it)",
            shown(text, secret=True),
        )
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class StandardWebhooks:
    """Standard Webhooks (and Svix): ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature`` (or the same with ``svix-``), over ``{id}.{timestamp}.{body}``.

    Example:
        >>> scheme = StandardWebhooks(secrets=("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",))
        >>> verified = scheme.verify(headers, body, now=time.time())  # doctest: +SKIP

    A ``whsec_`` secret (or bare base64, as the reference library accepts) checks ``v1``
    signatures (HMAC-SHA256); a ``whpk_`` public key checks ``v1a`` (Ed25519, with the
    ``webhooks`` extra). The ``webhook-`` headers are read when ``webhook-signature`` is
    present, else the ``svix-`` ones, never a mix.
    """

    secrets: tuple[str, ...] = field(repr=False)
    tolerance: float = 300.0

    name: ClassVar[str] = "standard_webhooks"
    header_names: ClassVar[frozenset[str]] = frozenset(
        f"{prefix}-{part}"
        for prefix in ("webhook", "svix")
        for part in ("id", "timestamp", "signature")
    )
    event_id_field: ClassVar[None] = None
    carries_id: ClassVar[bool] = True
    # Svix retries for 27 h 35 min (docs.svix.com/retries); the spec's example schedule
    # (github.com/standard-webhooks/standard-webhooks, spec/standard-webhooks.md,
    # "Deliverability and reliability") spans 75 h 35 min 5 s. Manual replays are left
    # to each sender by the spec; the example schedule is the longest documented horizon.
    horizon: ClassVar[float] = 75 * 3600.0 + 35 * 60.0 + 5.0

    _hmac_keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _public_keys: tuple[Callable[[bytes, bytes], bool], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        secrets = _checked_secrets(self, self.secrets)
        _set(self, "secrets", secrets)
        _set(self, "tolerance", _checked_tolerance(self, self.tolerance))
        hmac_keys, public_keys = [], []
        for index, text in enumerate(secrets):
            if text.startswith("whsk_"):
                _fail(
                    "StandardWebhooks",
                    f"secrets[{index}]",
                    "the sender's whpk_ public key (whsk_ is its private signing key)",
                    shown(text, secret=True),
                )
            raw = _decoded_secret(index, text)
            if not text.startswith("whpk_"):
                hmac_keys.append(raw)
            elif len(raw) != 32:
                _fail(
                    "StandardWebhooks",
                    f"secrets[{index}]",
                    "whpk_ followed by the base64 of a 32-byte Ed25519 public key",
                    shown(text, secret=True),
                )
            else:
                public_keys.append(_ed25519(raw))
        _set(self, "_hmac_keys", tuple(hmac_keys))
        _set(self, "_public_keys", tuple(public_keys))

    def verify(self, headers: Headers, body: bytes, now: float) -> Verified:
        svix = headers.get("webhook-signature") is None and "svix-signature" in headers
        prefix = "svix" if svix else "webhook"
        names = [f"{prefix}-{part}" for part in ("signature", "id", "timestamp")]
        signature, event_id, timestamp = (_read(headers, n, n, self.name) for n in names)
        signed = _timestamp(timestamp, names[2])
        content = b".".join((_wire(event_id, names[1]), signed, body))
        by_version: dict[str, list[bytes]] = {}  # the versions checked here (Rule 6)
        if self._hmac_keys:
            by_version["v1"] = []
        if self._public_keys:
            by_version["v1a"] = []
        found: set[str] = set()
        for entry in _entries(signature.split(), names[0]):
            version, comma, value = entry.partition(",")
            if not comma:
                _malformed(names[0], "an entry is not 'version,signature'")
            found.add(_label(version, names[0]))
            if version in by_version:
                by_version[version].append(_base64(value, names[0]))
        v1, v1a = by_version.get("v1", []), by_version.get("v1a", [])
        if not v1 and not v1a:
            raise WebhookSignatureUnsupported(
                header=names[0], expected=self._versions(), found=", ".join(sorted(found))
            )
        if not (
            any(_matches(_mac(key, content), v1) for key in self._hmac_keys)
            or any(check(sig, content) for sig in v1a for check in self._public_keys)
        ):
            raise WebhookSignatureMismatch(header=names[0])
        return Verified(self.name, event_id, _check_age(signed, now, self.tolerance))

    def sign(self, body: bytes, *, event_id: str, timestamp: int) -> dict[str, str]:
        """The ``webhook-*`` headers that sign ``body`` with every ``whsec_`` secret, as a
        sender rotating its keys does (for tests and examples: a receiver never signs).

        Raises:
            ValueError: the scheme has only ``whpk_`` public keys, which cannot sign.
        """
        if not self._hmac_keys:
            raise ValueError("StandardWebhooks.sign needs a whsec_ secret; whpk_ keys only verify")
        content = f"{event_id}.{timestamp}.".encode("latin-1") + body
        signatures = (base64.b64encode(_mac(key, content)).decode() for key in self._hmac_keys)
        return {
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(f"v1,{sig}" for sig in signatures),
        }

    def _versions(self) -> str:
        return ", ".join(
            v for v, keys in (("v1", self._hmac_keys), ("v1a", self._public_keys)) if keys
        )


# --- Stripe ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Stripe:
    """Stripe: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]``, HMAC-SHA256 over
    ``{t}.{body}`` keyed by the secret string itself (``whsec_`` prefix included).

    Example:
        >>> scheme = Stripe(secrets=(os.environ["STRIPE_WEBHOOK_SECRET"],))  # doctest: +SKIP

    ``v0`` and other schemes' signatures are skipped; the event id is the body's ``id``
    (``event_id_field``). Unlike stripe-python, a timestamp from the future is refused too.
    """

    secrets: tuple[str, ...] = field(repr=False)
    tolerance: float = 300.0

    name: ClassVar[str] = "stripe"
    header_names: ClassVar[frozenset[str]] = frozenset({"stripe-signature"})
    event_id_field: ClassVar[str] = "id"
    carries_id: ClassVar[bool] = False
    # Stripe resends an undelivered event for up to 3 days in live mode, and lists events
    # for manual resending for 30 days (docs.stripe.com/webhooks#automatic-retries and
    # docs.stripe.com/webhooks/process-undelivered-events): 3 + 30 days.
    horizon: ClassVar[float] = 33 * _DAY

    _keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set(self, "secrets", _checked_secrets(self, self.secrets))
        _set(self, "tolerance", _checked_tolerance(self, self.tolerance))
        _set(self, "_keys", tuple(secret.encode() for secret in self.secrets))

    def verify(self, headers: Headers, body: bytes, now: float) -> Verified:
        header = "Stripe-Signature"
        value = _read(headers, "stripe-signature", header, self.name)
        stamps: list[str] = []
        v1: list[bytes] = []
        found: set[str] = set()
        for entry in _entries(value.split(","), header):
            key, equals, item = entry.strip().partition("=")
            if not equals:
                _malformed(header, "an entry is not 'key=value'")
            if key == "t":
                stamps.append(item)
            elif _label(key, header) == "v1":
                v1.append(_hex(item, header))
            found.add(key)
        if len(stamps) != 1:
            _malformed(header, "it needs exactly one t= timestamp")
        signed = _timestamp(stamps[0], header)
        if not v1:
            found.discard("t")
            raise WebhookSignatureUnsupported(
                header=header, expected="v1", found=", ".join(sorted(found)) or "none"
            )
        content = signed + b"." + body
        if not any(_matches(_mac(key, content), v1) for key in self._keys):
            raise WebhookSignatureMismatch(header=header)
        return Verified(self.name, None, _check_age(signed, now, self.tolerance))

    def sign(self, body: bytes, *, timestamp: int) -> dict[str, str]:
        """The ``stripe-signature`` header that signs ``body`` with every secret, as
        Stripe does while an endpoint rolls its secret (for tests and examples)."""
        content = f"{timestamp}.".encode() + body
        signatures = ",".join(f"v1={_mac(key, content).hex()}" for key in self._keys)
        return {"stripe-signature": f"t={timestamp},{signatures}"}


# --- GitHub ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GitHub:
    """GitHub: ``X-Hub-Signature-256: sha256=<hex>``, HMAC-SHA256 of the body; no
    timestamp, so a captured delivery stays valid: only processing it once guards it.

    Example:
        >>> scheme = GitHub(secrets=(os.environ["GITHUB_WEBHOOK_SECRET"],))  # doctest: +SKIP

    The event id is ``X-GitHub-Delivery`` (not signed by GitHub).
    """

    secrets: tuple[str, ...] = field(repr=False)

    name: ClassVar[str] = "github"
    header_names: ClassVar[frozenset[str]] = frozenset({"x-hub-signature-256", "x-github-delivery"})
    event_id_field: ClassVar[None] = None
    carries_id: ClassVar[bool] = True
    tolerance: ClassVar[None] = None
    # GitHub never redelivers by itself; a person may redeliver deliveries of the past
    # 3 days on github.com, 7 on GitHub Enterprise Server
    # (docs.github.com/en/webhooks/testing-and-troubleshooting-webhooks/redelivering-webhooks).
    horizon: ClassVar[float] = 7 * _DAY

    _keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set(self, "secrets", _checked_secrets(self, self.secrets))
        _set(self, "_keys", tuple(secret.encode() for secret in self.secrets))

    def verify(self, headers: Headers, body: bytes, now: float) -> Verified:
        header = "X-Hub-Signature-256"
        value = _read(headers, "x-hub-signature-256", header, self.name)
        algorithm, equals, item = value.strip().partition("=")
        if not equals:
            _malformed(header, "it is not 'sha256=<hex>'")
        if _label(algorithm, header) != "sha256":
            raise WebhookSignatureUnsupported(header=header, expected="sha256", found=algorithm)
        signature = [_hex(item, header)]
        if not any(_matches(_mac(key, body), signature) for key in self._keys):
            raise WebhookSignatureMismatch(header=header)
        delivery = _read_optional(headers, "x-github-delivery", "X-GitHub-Delivery")
        return Verified(self.name, delivery, None)

    def sign(self, body: bytes) -> dict[str, str]:
        """The ``x-hub-signature-256`` header GitHub sends for ``body`` (first secret)."""
        return {"x-hub-signature-256": f"sha256={_mac(self._keys[0], body).hex()}"}


# --- a generic HMAC -------------------------------------------------------------------

_Part: TypeAlias = bytes | Literal["body", "timestamp", "id"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Hmac:
    """A generic HMAC signature: header, algorithm, encoding and signed content from
    configuration, for senders that follow none of the schemes above.

    Example:
        >>> scheme = Hmac(
        ...     secrets=(os.environ["PARTNER_WEBHOOK_SECRET"],), header="X-Signature",
        ...     prefix="sha256=", content="{timestamp}.{body}", timestamp_header="X-Timestamp",
        ... )  # doctest: +SKIP

    ``content`` is a template over ``{body}`` (required), ``{timestamp}`` (the value of
    ``timestamp_header``, which must then be signed) and ``{id}`` (of ``id_header``); its
    other text is signed as UTF-8. The header may carry several signatures separated by
    ``,`` or whitespace, each starting with ``prefix``. The key is the secret's UTF-8 bytes.

    Warning:
        Without ``timestamp_header`` nothing expires (``tolerance`` is None): a captured
        delivery stays valid, and only processing each event once guards against it. An
        ``id_header`` the sender does not sign (``{id}`` not in ``content``) can be changed
        by whoever replays a delivery.
    """

    secrets: tuple[str, ...] = field(repr=False)
    header: str
    algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    content: str = "{body}"
    timestamp_header: str | None = None
    tolerance: float | None = 300.0
    id_header: str | None = None

    name: ClassVar[str] = "hmac"
    event_id_field: ClassVar[None] = None
    horizon: ClassVar[None] = None

    @property
    def carries_id(self) -> bool:
        return self.id_header is not None

    header_names: frozenset[str] = field(init=False, repr=False, compare=False)
    _keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    _parts: tuple[_Part, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set(self, "secrets", _checked_secrets(self, self.secrets))
        _set(self, "_keys", tuple(secret.encode() for secret in self.secrets))
        names = [self._field_name("header", self.header, optional=False)]
        for option in ("timestamp_header", "id_header"):
            value = getattr(self, option)
            if value is not None:
                names.append(self._field_name(option, value, optional=True))
        if len(set(names)) != len(names):
            _fail("Hmac", "header", "header names distinct from each other", repr(names))
        _set(self, "header_names", frozenset(names))
        if self.algorithm not in ("sha1", "sha256", "sha512"):
            _fail("Hmac", "algorithm", "'sha1', 'sha256' or 'sha512'", shown(self.algorithm))
        if self.encoding not in ("hex", "base64"):
            _fail("Hmac", "encoding", "'hex' or 'base64'", shown(self.encoding))
        if not isinstance(self.prefix, str) or _SEPARATORS.search(self.prefix):
            _fail("Hmac", "prefix", "a string without ',' or whitespace", shown(self.prefix))
        _set(self, "_parts", self._template())
        if self.timestamp_header is None:
            _set(self, "tolerance", None)
        else:
            _set(self, "tolerance", _checked_tolerance(self, self.tolerance))

    def _field_name(self, option: str, value: object, *, optional: bool) -> str:
        if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
            expected = "an HTTP header name" + (" or None" if optional else "")
            _fail("Hmac", option, expected, shown(value))
        return value.lower()

    def _template(self) -> tuple[_Part, ...]:
        expected = "a template over {body} (once), {timestamp} and {id}"
        if not isinstance(self.content, str):
            _fail("Hmac", "content", expected, shown(self.content))
        try:
            parsed = list(string.Formatter().parse(self.content))
        except ValueError:
            _fail("Hmac", "content", expected, shown(self.content))
        parts: list[_Part] = []
        for literal, name, spec, conversion in parsed:
            if literal:
                parts.append(literal.encode())
            if name is None:
                continue
            if name not in ("body", "timestamp", "id") or spec or conversion:
                _fail("Hmac", "content", expected, shown(self.content))
            parts.append(name)  # type: ignore[arg-type]  # one of the three, checked above
        if parts.count("body") != 1:
            _fail("Hmac", "content", expected, shown(self.content))
        needs = {"timestamp": self.timestamp_header, "id": self.id_header}
        for name, header in needs.items():
            if name in parts and header is None:
                _fail(
                    "Hmac",
                    "content",
                    f"{{{name}}} only with {name}_header set",
                    shown(self.content),
                )
        if self.timestamp_header is not None and "timestamp" not in parts:
            _fail(
                "Hmac",
                "content",
                "{timestamp} signed when timestamp_header is set",
                shown(self.content),
            )
        return tuple(parts)

    def verify(self, headers: Headers, body: bytes, now: float) -> Verified:
        value = _read(headers, self.header.lower(), self.header, self.name)
        signatures = []
        for entry in _entries([e for e in _SEPARATORS.split(value) if e], self.header):
            if not entry.startswith(self.prefix):
                _malformed(self.header, f"a signature does not start with {self.prefix!r}")
            encoded = entry[len(self.prefix) :]
            decoded = (
                _hex(encoded, self.header)
                if self.encoding == "hex"
                else _base64(encoded, self.header)
            )
            signatures.append(decoded)
        values: dict[str, bytes] = {"body": body}
        signed = None
        if self.timestamp_header is not None:
            stamp = _read(headers, self.timestamp_header.lower(), self.timestamp_header, self.name)
            values["timestamp"] = signed = _timestamp(stamp, self.timestamp_header)
        event_id = None
        if self.id_header is not None:
            event_id = _read_optional(headers, self.id_header.lower(), self.id_header)
            if event_id is not None:
                values["id"] = _wire(event_id, self.id_header)
            elif "id" in self._parts:
                raise WebhookSignatureMissing(header=self.id_header, scheme=self.name)
        content = b"".join(p if isinstance(p, bytes) else values[p] for p in self._parts)
        if not any(_matches(_mac(key, content, self.algorithm), signatures) for key in self._keys):
            raise WebhookSignatureMismatch(header=self.header)
        if signed is None or self.tolerance is None:
            return Verified(self.name, event_id, None)
        return Verified(self.name, event_id, _check_age(signed, now, self.tolerance))

    def sign(
        self, body: bytes, *, timestamp: int | None = None, event_id: str | None = None
    ) -> dict[str, str]:
        """The headers that sign ``body`` with every secret (for tests and examples).

        Raises:
            ValueError: ``content`` signs a timestamp or id that was not given.
        """
        headers: dict[str, str] = {}
        values: dict[str, bytes] = {"body": body}
        for name, header, given in (
            ("timestamp", self.timestamp_header, None if timestamp is None else str(timestamp)),
            ("id", self.id_header, event_id),
        ):
            if header is not None and given is not None:
                headers[header.lower()] = given
                values[name] = given.encode("latin-1")
            elif name in self._parts:
                raise ValueError(f"Hmac.sign: content signs {{{name}}}; pass {name}=")
        content = b"".join(p if isinstance(p, bytes) else values[p] for p in self._parts)
        macs = [_mac(key, content, self.algorithm) for key in self._keys]
        encoded = [
            m.hex() if self.encoding == "hex" else base64.b64encode(m).decode() for m in macs
        ]
        headers[self.header.lower()] = ",".join(self.prefix + e for e in encoded)
        return headers
