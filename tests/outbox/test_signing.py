"""surefoot.outbox._signing: outgoing Standard Webhooks signatures, checked by the
reference library (``standardwebhooks``, v1), by surefoot's own receiver scheme
(``StandardWebhooks``, v1 and v1a) and by ``cryptography`` (v1a)."""

from __future__ import annotations

import base64
import sys
import time

import pytest
import standardwebhooks
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from surefoot.errors import ConfigurationError, WebhookSignatureMismatch
from surefoot.outbox._signing import sign
from surefoot.webhooks import StandardWebhooks

BODY = b'{"type":"invoice.paid","data":{"id":"in_1","amount":4200}}'
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WHSEC_NEW = "whsec_" + base64.b64encode(b"the rotated secret, 32 bytes!!!!").decode()
SEED = bytes(range(32))
WHSK = "whsk_" + base64.b64encode(SEED).decode()
PUBLIC = Ed25519PrivateKey.from_private_bytes(SEED).public_key()
WHPK = "whpk_" + base64.b64encode(PUBLIC.public_bytes_raw()).decode()


def entries(headers: dict[str, str]) -> list[str]:
    return headers["webhook-signature"].split(" ")


def with_only(headers: dict[str, str], entry: str) -> dict[str, str]:
    return {**headers, "webhook-signature": entry}


def reference_verifies(secret: str, headers: dict[str, str], body: bytes) -> bool:
    try:
        standardwebhooks.Webhook(secret).verify(body, headers, json_parse=False)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


def receiver_verifies(secret: str, headers: dict[str, str], body: bytes, now: int) -> bool:
    scheme = StandardWebhooks(secrets=(secret,))
    try:
        verified = scheme.verify(headers, body, now=float(now))
    except WebhookSignatureMismatch:
        return False
    assert verified.event_id == headers["webhook-id"]
    return True


def test_headers_carry_id_timestamp_and_one_signature_per_secret() -> None:
    headers = sign([WHSEC, WHSK, WHSEC_NEW], BODY, message_id="msg_1", timestamp=1700000000)

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert [e.split(",", 1)[0] for e in entries(headers)] == ["v1", "v1a", "v1"]


def test_standard_webhooks_spec_vector() -> None:
    # The example in the Standard Webhooks and Svix documentation.
    headers = sign(
        [WHSEC],
        b'{"test": 2432232314}',
        message_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp=1614265330,
    )

    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_same_inputs_same_headers() -> None:
    # An attempt retried with the same timestamp is signed the same (and v1a is deterministic).
    first = sign([WHSEC, WHSK], BODY, message_id="msg_1", timestamp=1700000000)

    assert sign([WHSEC, WHSK], BODY, message_id="msg_1", timestamp=1700000000) == first
    assert sign([WHSEC, WHSK], BODY, message_id="msg_1", timestamp=1700000001) != first


# --- v1: the reference library and surefoot's receiver -------------------------------------


@pytest.mark.parametrize("secret", [WHSEC, WHSEC_NEW])
def test_v1_verifies_in_the_reference_library_and_the_receiver(secret: str) -> None:
    now = int(time.time())  # the reference library checks the timestamp against the real clock
    headers = sign([secret], BODY, message_id="msg_2Ab9", timestamp=now)

    assert reference_verifies(secret, headers, BODY)
    assert receiver_verifies(secret, headers, BODY, now)


def test_unpadded_base64_secret_signs_as_padded() -> None:
    raw = b"a 25-byte secret, padded!"
    padded = "whsec_" + base64.b64encode(raw).decode()
    unpadded = padded.rstrip("=")
    assert padded != unpadded
    now = int(time.time())

    headers = sign([unpadded], BODY, message_id="msg_3", timestamp=now)

    assert headers == sign([padded], BODY, message_id="msg_3", timestamp=now)
    assert reference_verifies(unpadded, headers, BODY)


def test_rotated_secrets_give_two_signatures_each_verifying_alone() -> None:
    now = int(time.time())
    headers = sign([WHSEC, WHSEC_NEW], BODY, message_id="msg_rot", timestamp=now)
    old, new = entries(headers)

    assert old != new
    for secret in (WHSEC, WHSEC_NEW):  # a consumer holding either secret accepts the message
        assert reference_verifies(secret, headers, BODY)
        assert receiver_verifies(secret, headers, BODY, now)
    for secret, mine, other in ((WHSEC, old, new), (WHSEC_NEW, new, old)):
        assert reference_verifies(secret, with_only(headers, mine), BODY)
        assert receiver_verifies(secret, with_only(headers, mine), BODY, now)
        assert not reference_verifies(secret, with_only(headers, other), BODY)
        assert not receiver_verifies(secret, with_only(headers, other), BODY, now)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b + b" "), id="body-appended"),
        pytest.param(lambda h, b: (h, b.replace(b"4200", b"4201")), id="body-changed"),
        pytest.param(lambda h, b: (h, b""), id="body-emptied"),
        pytest.param(lambda h, b: ({**h, "webhook-id": "msg_other"}, b), id="id-changed"),
        pytest.param(
            lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 1)}, b),
            id="timestamp-changed",
        ),
    ],
)
def test_tampered_message_verifies_with_no_secret(tamper: object) -> None:
    now = int(time.time())
    signed = sign([WHSEC, WHSEC_NEW, WHSK], BODY, message_id="msg_t", timestamp=now)
    headers, body = tamper(signed, BODY)  # type: ignore[operator]

    for secret in (WHSEC, WHSEC_NEW):
        assert not reference_verifies(secret, headers, body)
    for secret in (WHSEC, WHSEC_NEW, WHPK):
        assert not receiver_verifies(secret, headers, body, now)
    with pytest.raises(WebhookSignatureMismatch):
        StandardWebhooks(secrets=(WHSEC, WHSEC_NEW, WHPK)).verify(headers, body, now=float(now))


# --- v1a: Ed25519 ------------------------------------------------------------------------


def test_v1a_verifies_with_the_matching_public_key() -> None:
    now = int(time.time())
    headers = sign([WHSK], BODY, message_id="msg_ed", timestamp=now)
    (entry,) = entries(headers)
    version, _, value = entry.partition(",")

    assert version == "v1a"
    PUBLIC.verify(base64.b64decode(value), f"msg_ed.{now}.".encode() + BODY)  # raises if not
    assert receiver_verifies(WHPK, headers, BODY, now)
    other = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key()
    other_whpk = "whpk_" + base64.b64encode(other.public_bytes_raw()).decode()
    assert not receiver_verifies(other_whpk, headers, BODY, now)


def test_a_64_byte_whsk_signs_with_its_seed() -> None:
    # libsodium's secret key: the 32-byte seed followed by the 32-byte public key.
    whsk64 = "whsk_" + base64.b64encode(SEED + PUBLIC.public_bytes_raw()).decode()

    headers = sign([whsk64], BODY, message_id="msg_64", timestamp=1700000000)

    assert headers == sign([WHSK], BODY, message_id="msg_64", timestamp=1700000000)


def test_mixed_v1_and_v1a_each_verify_alone() -> None:
    now = int(time.time())
    headers = sign([WHSEC, WHSK], BODY, message_id="msg_mix", timestamp=now)
    v1, v1a = entries(headers)

    assert v1.startswith("v1,")
    assert v1a.startswith("v1a,")
    assert reference_verifies(WHSEC, headers, BODY)  # it skips the v1a entry
    assert receiver_verifies(WHSEC, headers, BODY, now)
    assert receiver_verifies(WHPK, headers, BODY, now)
    assert receiver_verifies(WHSEC, with_only(headers, v1), BODY, now)
    assert receiver_verifies(WHPK, with_only(headers, v1a), BODY, now)


def test_whsk_without_cryptography_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A key never signed with before, so the signer cache cannot answer without the import.
    fresh = "whsk_" + base64.b64encode(b"\x07" * 32).decode()
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.ed25519", None)

    with pytest.raises(ConfigurationError) as caught:
        sign([fresh], BODY, message_id="msg_1", timestamp=1700000000)

    assert str(caught.value) == (
        "secrets: a whsk_ signing key (v1a, Ed25519) needs the 'cryptography' package: "
        "pip install 'surefoot[webhooks]'"
    )
    assert "BwcH" not in str(caught.value)  # the key is never shown


# --- Hypothesis: any body, any id the outbox accepts -------------------------------------

message_ids = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


@given(body=st.binary(max_size=512), message_id=message_ids)
def test_any_body_and_id_verify_in_the_reference_library(body: bytes, message_id: str) -> None:
    now = int(time.time())
    headers = sign([WHSEC, WHSEC_NEW], body, message_id=message_id, timestamp=now)

    assert reference_verifies(WHSEC, headers, body)
    assert reference_verifies(WHSEC_NEW, headers, body)
    assert not reference_verifies(WHSEC, headers, body + b"\x00")
