"""Notifications from alerts: Alertmanager's grouping, timers, silences; the Slack payload."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.metrics._alert import Alert, Labels, labels_of
from surefoot.metrics._notify import (
    Dispatcher,
    Matcher,
    Notification,
    Route,
    Silence,
    silenced_by,
    slack_payload,
)

FOREVER = 10.0**9
SILENCE_IDS = itertools.count()


def alert(ident: str, state: str = "firing", **annotations: str) -> Alert:
    """``"A.p1.eu"``: alertname A, policy p1, region eu (policy and region optional)."""
    name, *rest = ident.split(".")
    pairs = dict(zip(("policy", "region"), rest, strict=False))
    return Alert(
        labels=labels_of(alertname=name, severity="warning", **pairs),
        state=state,  # type: ignore[arg-type]
        active_since=1_765_000_000.0,
        value=2.5,
        annotations=tuple(sorted(annotations.items())),
    )


def ident(a: Alert) -> str:
    labels = dict(a.labels)
    return ".".join(labels[key] for key in ("alertname", "policy", "region") if key in labels)


def silence(*matchers: tuple[str, str, str], start: float = 0, end: float = FOREVER) -> Silence:
    return Silence(
        id=f"s{next(SILENCE_IDS)}",
        matchers=tuple(Matcher(*matcher) for matcher in matchers),  # type: ignore[arg-type]
        starts_at=start,
        ends_at=end,
        comment="maintenance",
        created_by="ops",
    )


# A timeline: at each time (every 10 s from 0 to `until`), the alerts firing (by ident) and
# the silences (by matcher on policy, with their window).
Window = tuple[float, float, str]  # [from, to) and what the silence matches (policy=...)


def run(
    route: Route,
    spans: dict[str, tuple[float, float]],
    silences: Sequence[Window] = (),
    until: float = 700,
    every: float = 10,
) -> list[tuple[float, str, tuple[str, ...], tuple[str, ...]]]:
    """Steps the dispatcher; alert ``ident`` fires in ``[from, to)`` of ``spans``."""
    dispatcher = Dispatcher(route)
    board = [
        silence(("policy", "=", policy), start=start, end=end) for start, end, policy in silences
    ]
    out = []
    t = 0.0
    while t <= until:
        alerts = [alert(name) for name, (start, end) in spans.items() if start <= t < end]
        for n in dispatcher.step(alerts, board, t):
            out.append((t, n.group_key, tuple(map(ident, n.firing)), tuple(map(ident, n.resolved))))
        t += every
    return out


TIMELINES: list[Any] = [
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER)},
        (),
        [(30, '{alertname="A"}', ("A.p1",), ())],
        id="group_wait: the first notification waits 30 s, then nothing changes",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER), "A.p2": (20, FOREVER)},
        (),
        [(30, '{alertname="A"}', ("A.p1", "A.p2"), ())],
        id="alerts starting within group_wait arrive in one notification",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER), "A.p2": (100, FOREVER)},
        (),
        [(30, '{alertname="A"}', ("A.p1",), ()), (330, '{alertname="A"}', ("A.p1", "A.p2"), ())],
        id="group_interval: a new alert is sent 300 s after the last send",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER), "A.p2": (500, FOREVER)},
        (),
        [(30, '{alertname="A"}', ("A.p1",), ()), (500, '{alertname="A"}', ("A.p1", "A.p2"), ())],
        id="a change long after the last send is sent at once",
    ),
    pytest.param(
        Route(group_interval=100, repeat_interval=250),
        {"A.p1": (0, FOREVER)},
        (),
        [
            (30, '{alertname="A"}', ("A.p1",), ()),
            (280, '{alertname="A"}', ("A.p1",), ()),
            (530, '{alertname="A"}', ("A.p1",), ()),
        ],
        id="repeat_interval: an unchanged group is sent again",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, 100), "A.p1.eu": (400, FOREVER)},
        (),
        [
            (30, '{alertname="A"}', ("A.p1",), ()),
            (330, '{alertname="A"}', (), ("A.p1",)),
            (430, '{alertname="A"}', ("A.p1.eu",), ()),
        ],
        id="all resolved: one resolved notification, then a new group waits group_wait",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, 10)},
        (),
        [],
        id="resolved within group_wait: nothing is sent",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER), "A.p2": (0, 100)},
        (),
        [
            (30, '{alertname="A"}', ("A.p1", "A.p2"), ()),
            (330, '{alertname="A"}', ("A.p1",), ("A.p2",)),
        ],
        id="one of two resolved: the next notification reports it, once",
    ),
    pytest.param(
        Route(send_resolved=False, group_interval=100, repeat_interval=400),
        {"A.p1": (0, FOREVER), "A.p2": (0, 100), "B.p1": (0, 50), "B.p2": (600, FOREVER)},
        (),
        [
            (30, '{alertname="A"}', ("A.p1", "A.p2"), ()),
            (30, '{alertname="B"}', ("B.p1",), ()),
            (430, '{alertname="A"}', ("A.p1",), ()),
            (630, '{alertname="B"}', ("B.p2",), ()),
        ],
        id="without send_resolved a resolution is no change and the group is forgotten silently",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER)},
        [(0, 200, "p1")],
        [(230, '{alertname="A"}', ("A.p1",), ())],
        id="silenced from the start: sent group_wait after its silence ends",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, 200), "A.p2": (0, FOREVER)},
        [(100, 500, "p2")],
        [
            (30, '{alertname="A"}', ("A.p1", "A.p2"), ()),
            (330, '{alertname="A"}', (), ("A.p1",)),
            (530, '{alertname="A"}', ("A.p2",), ()),
        ],
        id="silenced mid-way: left out, no change; back as a new group when its silence ends",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER), "A.p2": (100, FOREVER)},
        [(100, 400, "p2")],
        [(30, '{alertname="A"}', ("A.p1",), ()), (400, '{alertname="A"}', ("A.p1", "A.p2"), ())],
        id="added silenced mid-way: no change until its silence ends",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER), "A.p2": (0, 150)},
        [(100, 400, "p2")],
        [
            (30, '{alertname="A"}', ("A.p1", "A.p2"), ()),
            (400, '{alertname="A"}', ("A.p1",), ("A.p2",)),
        ],
        id="resolved while silenced: reported resolved once its silence ends",
    ),
    pytest.param(
        Route(),
        {"A.p1": (0, FOREVER), "B.p1": (50, FOREVER)},
        (),
        [(30, '{alertname="A"}', ("A.p1",), ()), (80, '{alertname="B"}', ("B.p1",), ())],
        id="several groups run their own timers",
    ),
    pytest.param(
        Route(group_by=("alertname", "policy")),
        {"A.p1.eu": (0, FOREVER), "A.p1.us": (0, FOREVER), "A.p2.eu": (0, FOREVER), "A": (0, 20)},
        (),
        [
            (30, '{alertname="A",policy="p1"}', ("A.p1.eu", "A.p1.us"), ()),
            (30, '{alertname="A",policy="p2"}', ("A.p2.eu",), ()),
        ],
        id="group_by over two labels; an alert lacking one is in a group without it",
    ),
    pytest.param(
        Route(group_by=(), group_wait=0),
        {"A.p1": (0, FOREVER), "B.p2": (0, FOREVER)},
        (),
        [(0, "{}", ("A.p1", "B.p2"), ())],
        id="group_by nothing: one group; group_wait 0 sends at the first step",
    ),
]


@pytest.mark.parametrize(("route", "spans", "silences", "expected"), TIMELINES)
def test_dispatcher_timeline(
    route: Route,
    spans: dict[str, tuple[float, float]],
    silences: Sequence[Window],
    expected: list[tuple[float, str, tuple[str, ...], tuple[str, ...]]],
) -> None:
    assert run(route, spans, silences) == expected


def test_pending_alerts_never_notify() -> None:
    dispatcher = Dispatcher(Route(group_wait=0))
    assert dispatcher.step([alert("A.p1", state="pending")], [], 0) == []
    assert dispatcher.step([alert("A.p1", state="pending")], [], 100) == []


def test_an_alert_pending_again_was_resolved() -> None:
    dispatcher = Dispatcher(Route(group_wait=0, group_interval=10, repeat_interval=10))
    (first,) = dispatcher.step([alert("A.p1")], [], 0)
    (second,) = dispatcher.step([alert("A.p1", state="pending")], [], 10)
    assert (first.firing, second.firing, second.resolved) == (
        (alert("A.p1"),),
        (),
        (alert("A.p1"),),
    )


def test_a_resolved_alert_is_reported_as_last_sent() -> None:
    dispatcher = Dispatcher(Route(group_wait=0, group_interval=10, repeat_interval=10))
    dispatcher.step([alert("A.p1")], [], 0)
    dispatcher.step([Alert(alert("A.p1").labels, "firing", 0.0, 99.0)], [], 5)
    (resolved,) = dispatcher.step([], [], 10)
    assert resolved.resolved == (alert("A.p1"),)


def test_group_key_escapes_values_as_prometheus_does() -> None:
    dispatcher = Dispatcher(Route(group_by=("alertname", "policy"), group_wait=0))
    odd = Alert(labels_of(alertname="A", severity="x", policy='a"b\\c\nd'), "firing", 0.0, 1.0)
    (notification,) = dispatcher.step([odd], [], 0)
    assert notification.group_key == '{alertname="A",policy="a\\"b\\\\c\\nd"}'
    assert notification.group_labels == (("alertname", "A"), ("policy", 'a"b\\c\nd'))


def test_fingerprint_names_the_content_the_same_for_every_worker() -> None:
    route = Route(group_wait=0, group_interval=10, repeat_interval=20)
    one, two = Dispatcher(route), Dispatcher(route)
    (a,) = one.step([alert("A.p1"), alert("A.p2")], [], 0)
    (b,) = two.step([alert("A.p2"), alert("A.p1")], [], 3)
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64
    assert set(a.fingerprint) <= set("0123456789abcdef")
    (repeat,) = one.step([alert("A.p1"), alert("A.p2")], [], 20)
    (change,) = one.step([alert("A.p1")], [], 30)
    assert repeat.fingerprint == a.fingerprint
    assert change.fingerprint != a.fingerprint
    assert len({a.fingerprint, change.fingerprint, one.step([], [], 40)[0].fingerprint}) == 3


# ---- matchers and silences


MATCHES = [
    ("=", "p1", {"policy": "p1"}, True),
    ("=", "p1", {"policy": "p2"}, False),
    ("=", "p1", {}, False),
    ("=", "", {}, True),
    ("=", "", {"policy": "p1"}, False),
    ("!=", "p1", {"policy": "p1"}, False),
    ("!=", "p1", {"policy": "p2"}, True),
    ("!=", "p1", {}, True),
    ("!=", "", {}, False),
    ("=~", "part", {"policy": "partners"}, False),
    ("=~", "ners", {"policy": "partners"}, False),
    ("=~", "part.*", {"policy": "partners"}, True),
    ("=~", "x|partners", {"policy": "partners"}, True),
    ("=~", "partners|x", {"policy": "partners-eu"}, False),
    ("=~", "(?i)PARTNERS", {"policy": "partners"}, True),
    ("=~", "p.*", {}, False),
    ("=~", "p.*|", {}, True),
    ("!~", "prod.*", {}, True),
    ("!~", "prod.*", {"policy": "production"}, False),
    ("!~", "prod", {"policy": "production"}, True),
]


@pytest.mark.parametrize(("op", "value", "labels", "expected"), MATCHES)
def test_matcher_semantics(op: str, value: str, labels: dict[str, str], expected: bool) -> None:
    matcher = Matcher("policy", op, value)  # type: ignore[arg-type]
    assert matcher.matches(labels_of(alertname="A", **labels)) is expected


@pytest.mark.parametrize(
    ("op", "value", "selective"),
    [
        ("=", "p", True),
        ("=", "", False),
        ("=~", ".+", True),
        ("=~", ".*", False),
        ("=~", "p|", False),
        ("!=", "p", True),
        ("!~", ".*", True),
    ],
)
def test_a_matcher_is_selective_unless_it_matches_the_empty_string(
    op: str, value: str, selective: bool
) -> None:
    assert Matcher("env", op, value).selective is selective  # type: ignore[arg-type]


def test_silence_matches_when_every_matcher_matches() -> None:
    s = silence(("alertname", "=", "A"), ("policy", "=~", "p[12]"))
    assert s.matches(alert("A.p1").labels)
    assert not s.matches(alert("A.p3").labels)
    assert not s.matches(alert("B.p1").labels)


def test_silence_is_active_from_start_included_to_end_excluded() -> None:
    s = silence(("policy", "=", "p1"), start=100, end=200)
    assert [s.active(t) for t in (99.9, 100, 199.9, 200)] == [False, True, True, False]


def test_silenced_by_lists_the_active_matching_silences_sorted() -> None:
    one = Silence("b", (Matcher("policy", "=", "p1"),), 0, 100, "c", "ops")
    two = Silence("a", (Matcher("alertname", "=", "A"),), 0, 100, "c", "ops")
    later = Silence("c", (Matcher("alertname", "=", "A"),), 50, 100, "c", "ops")
    other = Silence("d", (Matcher("alertname", "=", "B"),), 0, 100, "c", "ops")
    assert silenced_by(alert("A.p1"), [one, two, later, other], 10) == ("a", "b")
    assert silenced_by(alert("A.p1"), [one, two, later, other], 60) == ("a", "b", "c")
    assert silenced_by(alert("A.p1"), [], 10) == ()


def test_silence_accepts_a_list_of_matchers_and_holds_a_tuple() -> None:
    s = Silence("x", [Matcher("a", "=", "b")], 0, 1, "c", "ops")  # type: ignore[arg-type]
    assert s.matchers == (Matcher("a", "=", "b"),)
    assert hash(s) == hash(Silence("x", (Matcher("a", "=", "b"),), 0.0, 1.0, "c", "ops"))


def make_silence(**changes: Any) -> Silence:
    fields: dict[str, Any] = {
        "id": "s-1_A",
        "matchers": (Matcher("policy", "=", "p1"),),
        "starts_at": 0,
        "ends_at": 100,
        "comment": "partner migration",
        "created_by": "ops@example.com",
    }
    return Silence(**(fields | changes))


LONG = "x" * 1025

INVALID: list[Any] = [
    (lambda: Matcher("1policy", "=", "p"), "matcher name: expected a label name"),
    (lambda: Matcher("po-licy", "=", "p"), "matcher name"),
    (lambda: Matcher("", "=", "p"), "matcher name"),
    (lambda: Matcher("a" * 257, "=", "p"), "matcher name"),
    (lambda: Matcher(3, "=", "p"), "matcher name"),  # type: ignore[arg-type]
    (lambda: Matcher("policy", "==", "p"), "matcher op: expected one of =, !=, =~, !~"),  # type: ignore[arg-type]
    (lambda: Matcher("policy", "=", LONG), "matcher value: expected a string of at most 1024"),
    (lambda: Matcher("policy", "=~", LONG), "matcher value: expected a string of at most 1024"),
    (lambda: Matcher("policy", "=", 5), "matcher value"),  # type: ignore[arg-type]
    (lambda: Matcher("policy", "=", "\ud800"), "matcher value: expected valid Unicode"),
    (lambda: Matcher("policy", "=~", "(unclosed"), "matcher value: expected a regular expression"),
    (lambda: Matcher("policy", "!~", "a{4294967296}"), "matcher value: expected a regular"),
    (lambda: Matcher("policy", "=~", "(" * 500 + ")" * 500), "matcher value: expected a regular"),
    (lambda: make_silence(id=""), "id: expected 1 to 64 characters"),
    (lambda: make_silence(id="a" * 65), "id: expected 1 to 64"),
    (lambda: make_silence(id="a b"), "id: expected 1 to 64"),
    (lambda: make_silence(id=7), "id: expected 1 to 64"),
    (lambda: make_silence(matchers=()), "matchers: expected 1 to 32 matchers"),
    (lambda: make_silence(matchers=(Matcher("a", "=", "b"),) * 33), "matchers: expected 1 to 32"),
    (lambda: make_silence(matchers=5), "matchers: expected a list of matchers"),
    (lambda: make_silence(matchers=("a=b",)), "matchers: expected Matcher values"),
    (
        lambda: make_silence(matchers=(Matcher("env", "=~", ".*"), Matcher("x", "=", ""))),
        "matchers: expected at least one matcher that does not match the empty string",
    ),
    (lambda: make_silence(starts_at="0"), "starts_at: expected a number of seconds"),
    (lambda: make_silence(starts_at=True), "starts_at: expected a number of seconds"),
    (lambda: make_silence(ends_at=float("inf")), "ends_at: expected a finite number"),
    (lambda: make_silence(ends_at=float("nan")), "ends_at: expected a finite number"),
    (lambda: make_silence(ends_at=10**400), "ends_at: expected a finite number"),
    (lambda: make_silence(ends_at=0), "ends_at: expected a time after starts_at"),
    (lambda: make_silence(comment=""), "comment: expected 1 to 1024 printable characters"),
    (lambda: make_silence(comment="   "), "comment: expected 1 to 1024"),
    (lambda: make_silence(comment="a\nb"), "comment: expected 1 to 1024"),
    (lambda: make_silence(comment=LONG), "comment: expected 1 to 1024"),
    (lambda: make_silence(comment=None), "comment: expected 1 to 1024"),
    (lambda: make_silence(created_by="x" * 129), "created_by: expected 1 to 128 printable"),
    (lambda: make_silence(created_by="\x00"), "created_by: expected 1 to 128"),
    (lambda: Route(group_by=("alert-name",)), "group_by: expected a label name"),
    (lambda: Route(group_by=("a", "a")), "group_by: expected distinct label names"),
    (lambda: Route(group_wait=-1), "group_wait: expected 0 or more seconds"),
    (lambda: Route(group_wait="30s"), "group_wait: expected a number of seconds"),  # type: ignore[arg-type]
    (lambda: Route(group_interval=0), "group_interval: expected more than 0 seconds"),
    (lambda: Route(repeat_interval=299), "repeat_interval: expected at least group_interval"),
    (lambda: Route(repeat_interval=float("inf")), "repeat_interval: expected a finite number"),
]


@pytest.mark.parametrize(("make", "message"), INVALID)
def test_validation_errors_name_the_field_and_what_is_expected(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        make()


def test_valid_edges_are_accepted() -> None:
    make_silence(
        id="a" * 64,
        matchers=(Matcher("a" * 256, "=~", "x" * 1024),) + (Matcher("b", "=", ""),) * 31,
        comment="c" * 1024,
        created_by="d" * 128,
        starts_at=1.5,
        ends_at=1.5000001,
    )
    make_silence(matchers=(Matcher("alertname", "!=", "Watchdog"),))  # Alertmanager allows it
    make_silence(matchers=(Matcher("env", "=", ""), Matcher("alertname", "=~", "A.+")))
    Route(group_wait=0, group_interval=1, repeat_interval=1)


def test_encode_decode_round_trip() -> None:
    s = make_silence(
        matchers=(
            Matcher("policy", "=~", "p[0-9]+|é"),
            Matcher("alertname", "!=", 'a"\\b'),
            Matcher("env", "!~", "prod.*"),
            Matcher("x", "=", ""),
        ),
        starts_at=1_765_000_000.123456,
        ends_at=1_765_007_200,
        comment="migration — see ticket #42",
    )
    data = s.encode()
    assert isinstance(data, bytes)
    back = Silence.decode(data)
    assert back == s
    assert back.ends_at == 1_765_007_200.0
    assert isinstance(back.ends_at, float)
    assert back.matches(alert("A.p7").labels)
    assert json.loads(data)["matchers"][0] == {"name": "policy", "op": "=~", "value": "p[0-9]+|é"}
    assert Silence.decode(data).encode() == data


def encoded(**changes: Any) -> bytes:
    obj = json.loads(make_silence().encode()) | changes
    return json.dumps(obj, separators=(",", ":")).encode()


MALFORMED: list[Any] = [
    (b"", "silence: expected JSON"),
    (b"not json", "silence: expected JSON"),
    (b"\xff\xfe\x00", "silence: expected JSON"),
    (b"[" * 100_000, "silence: expected JSON"),
    (b"[]", "silence: expected an object with comment, created_by, ends_at, id"),
    (b'"s"', "silence: expected an object"),
    (json.dumps({"id": "x"}).encode(), "silence: expected an object"),
    (encoded(extra=1), "silence: expected an object"),
    (encoded(matchers={"name": "a"}), "matchers: expected a list of matchers"),
    (encoded(matchers=[]), "matchers: expected 1 to 32"),
    (encoded(matchers=["a=b"]), 'matcher: expected an object with "name", "op" and "value"'),
    (encoded(matchers=[{"name": "a", "op": "="}]), "matcher: expected an object"),
    (encoded(matchers=[{"name": "a", "op": "=", "value": "b", "x": 1}]), "matcher: expected"),
    (encoded(matchers=[{"name": "a", "op": "~", "value": "b"}]), "matcher op"),
    (encoded(matchers=[{"name": "a", "op": "=~", "value": "("}]), "matcher value"),
    (encoded(matchers=[{"name": "a", "op": "=", "value": None}]), "matcher value"),
    (encoded(matchers=[{"name": "a", "op": "=", "value": "\ud800"}]), "matcher value"),
    (encoded(matchers=[{"name": "a", "op": "=", "value": ""}]), "matchers: expected at least one"),
    (encoded(id=None), "id: expected"),
    (encoded(starts_at="1"), "starts_at: expected a number"),
    (encoded(starts_at=None), "starts_at: expected a number"),
    (encoded(ends_at=False), "ends_at: expected a number"),
    (encoded(ends_at=-1), "ends_at: expected a time after starts_at"),
    (encoded(comment=""), "comment: expected"),
    (encoded(created_by=["ops"]), "created_by: expected"),
    (encoded().replace(b'"ends_at":100.0', b'"ends_at":1e400'), "ends_at: expected a finite"),
    (encoded().replace(b'"ends_at":100.0', b'"ends_at":NaN'), "ends_at: expected a finite"),
    (encoded().replace(b'"ends_at":100.0', b'"ends_at":1' + b"0" * 400), "ends_at: expected a fin"),
    (encoded().replace(b'"ends_at":100.0', b'"ends_at":1' + b"0" * 5000), "silence: expected JSON"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED)
def test_decode_refuses_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        Silence.decode(data)


def test_matcher_dict_round_trip() -> None:
    matcher = Matcher("policy", "!~", "p.*")
    assert Matcher.from_dict(matcher.as_dict()) == matcher
    assert Matcher.from_dict({"value": "p.*", "op": "!~", "name": "policy"}) == matcher
    with pytest.raises(ValueError, match=r"^matcher: expected an object"):
        Matcher.from_dict([("name", "a")])


# ---- Slack


def notify(
    firing: Sequence[Alert], resolved: Sequence[Alert] = (), by: Labels | None = None
) -> Notification:
    group = (
        by
        if by is not None
        else (("alertname", "SurefootRateLimitRefusalsSpike"), ("policy", "partners"))
    )
    key = "{" + ",".join(f'{k}="{v}"' for k, v in group) + "}"
    return Notification(key, group, tuple(firing), tuple(resolved), "f" * 64)


def spike(policy: str = "partners", client: str = "c1", **annotations: str) -> Alert:
    return Alert(
        labels=labels_of(
            alertname="SurefootRateLimitRefusalsSpike",
            severity="warning",
            policy=policy,
            client=client,
        ),
        state="firing",
        active_since=1_765_051_524.0,
        value=12.345678,
        annotations=tuple(
            sorted(
                (
                    {
                        "summary": f"Refusals spike for {policy}",
                        "runbook_url": "https://docs.example.com/observability#surefootratelimitrefusalsspike",
                    }
                    | annotations
                ).items()
            )
        ),
    )


def texts(payload: dict[str, Any]) -> list[str]:
    return [block["text"]["text"] for block in payload["blocks"] if block["type"] == "section"]


def test_slack_payload_shape() -> None:
    payload = slack_payload(
        notify([spike(client="c1"), spike(client="c2")], [spike(client="c0")]), source="gw-1"
    )
    assert payload["text"] == "[FIRING:2] SurefootRateLimitRefusalsSpike (policy=partners)"
    header, context, *sections = payload["blocks"]
    assert header == {
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": "[FIRING:2] SurefootRateLimitRefusalsSpike (policy=partners)",
        },
    }
    assert context["type"] == "context"
    assert context["elements"][0]["type"] == "mrkdwn"
    assert "gw-1" in context["elements"][0]["text"]
    assert [s["type"] for s in sections] == ["section"] * 3
    first, _, last = texts(payload)
    assert first.splitlines() == [
        ":rotating_light: *FIRING* · *Refusals spike for partners*",
        "*SurefootRateLimitRefusalsSpike* · severity: *warning* · since: 2025-12-06T20:05:24Z"
        " · value: 12.3457",
        "labels: client=c1, policy=partners",
        "<https://docs.example.com/observability#surefootratelimitrefusalsspike|runbook>",
    ]
    assert last.startswith(":white_check_mark: *RESOLVED* · ")
    assert "client=c0" in last
    json.dumps(payload)


def test_slack_payload_resolved_only() -> None:
    payload = slack_payload(notify([], [spike(client="c1")]), source="gw")
    assert payload["text"] == "[RESOLVED:1] SurefootRateLimitRefusalsSpike (policy=partners)"
    (text,) = texts(payload)
    assert "*RESOLVED*" in text
    assert "FIRING" not in text


def test_slack_payload_without_alertname_in_the_group_names_the_alerts() -> None:
    other = Alert(labels_of(alertname="Other", severity="critical"), "firing", 0.0, 1.0)
    payload = slack_payload(notify([other, spike()], by=(("severity", "x"),)), source="gw")
    assert payload["text"] == "[FIRING:2] Other, SurefootRateLimitRefusalsSpike (severity=x)"
    (text, _) = texts(payload)
    assert text.startswith(":rotating_light: *FIRING* · *Other*")  # no summary: the name
    assert "labels:" not in text
    assert "runbook" not in text
    assert slack_payload(notify([other], by=()), source="gw")["text"] == "[FIRING:1] Other"


def test_slack_payload_escapes_mrkdwn_and_refuses_odd_runbook_links() -> None:
    evil = spike(policy="<!channel>&", summary="<@U123> *bold*", runbook_url="javascript:alert(1)")
    payload = slack_payload(notify([evil], by=(("alertname", "A<b>"),)), source="gw <x>")
    assert payload["text"] == "[FIRING:1] A&lt;b&gt;"
    assert payload["blocks"][0]["text"]["text"] == "[FIRING:1] A<b>"  # plain text: no markup
    assert (
        payload["blocks"][1]["elements"][0]["text"]
        == 'gw &lt;x&gt; · group {alertname="A&lt;b&gt;"}'
    )
    (text,) = texts(payload)
    assert "&lt;@U123&gt; *bold*" in text
    assert "policy=&lt;!channel&gt;&amp;" in text
    assert "runbook: javascript:alert(1)" in text
    assert "<javascript" not in text
    for url in (
        "https://x.example/a|b",
        "https://x.example/<b>",
        "https://x.example/a\x00b",
        "http://x.example/" + "a" * 1000,
    ):
        (text,) = texts(slack_payload(notify([spike(runbook_url=url)]), source="gw"))
        assert "|runbook>" not in text
        assert "runbook: " in text
    (text,) = texts(
        slack_payload(notify([spike(runbook_url="https://x.example/?a=1&b=2")]), source="gw")
    )
    assert text.endswith("<https://x.example/?a=1&amp;b=2|runbook>")


def test_slack_payload_keeps_each_field_on_one_line() -> None:
    payload = slack_payload(
        notify([spike(summary="two\nlines", client="a\nb")], by=(("alertname", "A\nB"),)),
        source="gw",
    )
    assert payload["text"] == "[FIRING:1] A B"
    (text,) = texts(payload)
    assert text.splitlines()[0].endswith("*two lines*")
    assert len(text.splitlines()) == 4


def test_slack_payload_truncates_past_50_blocks() -> None:
    alerts = [spike(client=f"c{i:02}") for i in range(55)]
    payload = slack_payload(notify(alerts, [spike(client=f"r{i}") for i in range(5)]), source="gw")
    assert len(payload["blocks"]) == 50
    assert payload["blocks"][-1]["text"]["text"] == "_... and 13 more_"
    assert "client=c46" in texts(payload)[-2]
    full = slack_payload(notify(alerts[:48]), source="gw")
    assert len(full["blocks"]) == 50
    assert "more" not in texts(full)[-1]
    assert payload["text"] == "[FIRING:55] SurefootRateLimitRefusalsSpike (policy=partners)"


def test_slack_payload_texts_stay_within_slacks_limits() -> None:
    huge = "&" * 5000
    big = Alert(
        labels=labels_of(
            alertname="A" * 5000, severity="<" * 5000, **{f"l{i}": huge for i in range(20)}
        ),
        state="firing",
        active_since=1e300,
        value=float("nan"),
        annotations=(("runbook_url", "https://x.example/" + "&" * 300), ("summary", huge)),
    )
    payload = slack_payload(notify([big] * 60, by=(("alertname", huge),)), source=huge)
    assert len(payload["blocks"]) == 50
    assert len(payload["blocks"][0]["text"]["text"]) <= 150
    assert len(payload["blocks"][1]["elements"][0]["text"]) <= 2000
    assert len(payload["text"]) <= 1000
    assert "\n" not in payload["text"]
    *sections, more = texts(payload)
    assert more == "_... and 13 more_"
    for text in sections:
        assert len(text) <= 3000
        assert "&am…" not in text  # an escape is never cut in two
        assert "&amp;…" in text
    first = texts(payload)[0]
    assert "since: 1e+300 · value: nan" in first
    assert "runbook: https://x.example/&amp;" in first  # too long to be a link


# ---- properties

POOL = ["A.p1", "A.p2", "B.p1", "B.p2.eu", "C"]
SILENCES = [
    silence(("policy", "=", "p1")),
    silence(("alertname", "=", "B"), ("region", "!~", "e.*")),
    silence(("alertname", "=~", "A|C"), start=300, end=900),
]
ROUTES = st.builds(
    lambda by, wait, interval, extra, resolved: Route(
        group_by=by,
        group_wait=wait,
        group_interval=interval,
        repeat_interval=interval + extra,
        send_resolved=resolved,
    ),
    st.sampled_from([("alertname",), (), ("alertname", "policy"), ("region",)]),
    st.integers(0, 60),
    st.integers(1, 300),
    st.integers(0, 600),
    st.booleans(),
)
STEPS = st.lists(
    st.tuples(
        st.integers(1, 120),
        st.frozensets(st.sampled_from(POOL)),
        st.frozensets(st.sampled_from(range(len(SILENCES)))),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(route=ROUTES, steps=STEPS)
def test_dispatcher_properties(
    route: Route, steps: list[tuple[int, frozenset[str], frozenset[int]]]
) -> None:
    dispatcher = Dispatcher(route)
    t = 0.0
    sent: dict[str, tuple[float, Notification]] = {}
    history: list[tuple[float, set[str], list[Notification]]] = []
    for delta, names, chosen in steps:
        t += delta
        alerts = [alert(name) for name in sorted(names)]
        board = [SILENCES[i] for i in sorted(chosen)]
        notifications = dispatcher.step(alerts, board, t)
        unsilenced = {ident(a) for a in alerts if not silenced_by(a, board, t)}
        history.append((t, unsilenced, notifications))
        for n in notifications:
            assert n.firing or n.resolved
            # No notification ever holds a silenced alert, firing or resolved.
            assert all(not silenced_by(a, board, t) for a in n.firing + n.resolved)
            assert {ident(a) for a in n.firing} <= names
            assert not {ident(a) for a in n.resolved} & names
            assert n.resolved == () or route.send_resolved
            assert all(route.group_of(a.labels) == n.group_labels for a in n.firing + n.resolved)
            # Never two notifications of a group within group_interval, unless the group
            # was forgotten after a resolved notification: then group_wait at least.
            if n.group_key in sent:
                before_t, before = sent[n.group_key]
                assert t > before_t
                assert t - before_t >= (route.group_interval if before.firing else route.group_wait)
            sent[n.group_key] = (t, n)
    # Liveness: an alert firing unsilenced for group_wait + repeat_interval (+ a step) is sent.
    horizon = route.group_wait + route.repeat_interval + 120
    for name in POOL:
        start: float | None = None
        seen = False
        for at, unsilenced, notifications in history:
            if name not in unsilenced:
                start, seen = None, False
                continue
            if start is None:
                start = at
            seen = seen or any(name in map(ident, n.firing) for n in notifications)
            assert seen or at - start < horizon, (name, start, at)
