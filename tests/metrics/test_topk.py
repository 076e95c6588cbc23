"""Weighted, mergeable Space-Saving: the guarantees of its Rules, checked against exact
counts of the same streams."""

from __future__ import annotations

import json
import random
import sys
import tracemalloc
from collections import defaultdict
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from surefoot.metrics._topk import MAX_ITEM, MAX_K, Counted, SpaceSaving, merge

Stream = Sequence[tuple[str, float]]


def summarize(stream: Stream, k: int) -> SpaceSaving:
    summary = SpaceSaving(k)
    for item, weight in stream:
        summary.add(item, weight)
    return summary


def exact(*streams: Stream) -> dict[str, float]:
    counts: defaultdict[str, float] = defaultdict(float)
    for stream in streams:
        for item, weight in stream:
            counts[item] += weight
    return dict(counts)


def assert_guarantee(summary: SpaceSaving, true: dict[str, float]) -> None:
    """Rules 1 to 4, and the invariants the proof rests on, for integer weights."""
    total = sum(true.values())
    assert summary.total == total
    assert len(summary) <= summary.k
    held = {c.item: c for c in summary.top()}
    for item, c in held.items():
        assert c.count - c.error <= true[item] <= c.count, item
        assert 0 <= c.error <= summary.total / summary.k, item
        assert c.error <= summary.floor(), item
    for item, count in true.items():
        if count > total / summary.k:
            assert item in held, item
        if item not in held:
            assert count <= summary.floor(), item
    assert sum(c.count for c in held.values()) <= total


def zipf(seed: int, length: int, alphabet: int, prefix: str = "client-") -> list[tuple[str, float]]:
    rng = random.Random(seed)
    names = [f"{prefix}{i}" for i in range(alphabet)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(alphabet)]
    return [(name, float(rng.randint(1, 3))) for name in rng.choices(names, weights, k=length)]


# --- small cases -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "stream", "expected"),
    [
        (1, [], []),
        (1, [("a", 1)], [("a", 1, 0)]),
        (1, [("a", 1), ("b", 1)], [("b", 2, 1)]),
        (1, [("a", 2), ("a", 3)], [("a", 5, 0)]),
        (2, [("a", 1), ("b", 1), ("a", 1), ("c", 1)], [("a", 2, 0), ("c", 2, 1)]),
        # a tie on the least count evicts the least item ("a" before "b")
        (2, [("b", 1), ("a", 1), ("c", 1)], [("c", 2, 1), ("b", 1, 0)]),
        # weights: the newcomer takes the least count plus its weight
        (2, [("a", 5), ("b", 2), ("c", 0.5)], [("a", 5, 0), ("c", 2.5, 2)]),
        # a held item added to again is not the least any more, though its heap entry was
        (2, [("a", 1), ("b", 2), ("a", 5), ("c", 1)], [("a", 6, 0), ("c", 3, 2)]),
        (3, [("x", 1), ("y", 1), ("z", 1)], [("x", 1, 0), ("y", 1, 0), ("z", 1, 0)]),
    ],
)
def test_small_streams(k: int, stream: Stream, expected: list[tuple[str, float, float]]) -> None:
    summary = summarize(stream, k)
    assert summary.top() == [Counted(*entry) for entry in expected]
    assert summary.total == sum(weight for _, weight in stream)
    assert summary.k == k
    assert len(summary) == len(expected)


def test_top_n_and_floor() -> None:
    summary = summarize([("a", 3), ("b", 2), ("c", 1)], 3)
    assert [c.item for c in summary.top(2)] == ["a", "b"]
    assert summary.top(0) == []
    assert len(summary.top(10)) == 3
    assert summary.floor() == 1
    assert SpaceSaving(4).floor() == 0
    assert summarize([("a", 3), ("b", 2)], 3).floor() == 0
    with pytest.raises(ValueError, match="n must be >= 0"):
        summary.top(-1)


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1, True, 1.5, "3"])
def test_k_out_of_range_is_refused(k: object) -> None:
    with pytest.raises(ValueError, match="k must be an integer"):
        SpaceSaving(k)  # type: ignore[arg-type]


def test_k_bounds_accepted() -> None:
    assert SpaceSaving(1).k == 1
    assert SpaceSaving(MAX_K).k == MAX_K


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_weights_are_refused_and_change_nothing(weight: float) -> None:
    summary = summarize([("a", 1)], 2)
    for item in ("a", "b"):
        with pytest.raises(ValueError, match="weight must be finite and > 0"):
            summary.add(item, weight)
    assert summary.top() == [Counted("a", 1, 0)]
    assert summary.total == 1


def test_a_total_that_would_overflow_is_refused_and_changes_nothing() -> None:
    summary = summarize([("a", 1e308)], 2)
    with pytest.raises(ValueError, match="no longer finite"):
        summary.add("a", 1e308)
    assert summary.top() == [Counted("a", 1e308, 0)]
    assert summary.total == 1e308


def test_items_longer_than_the_bound_are_refused() -> None:
    summary = SpaceSaving(2)
    summary.add("x" * MAX_ITEM)
    with pytest.raises(ValueError, match="at most 1024 characters"):
        summary.add("x" * (MAX_ITEM + 1))
    assert len(summary) == 1
    assert summary.total == 1


# --- against exact counts ----------------------------------------------------------------


@pytest.mark.parametrize(("seed", "k"), [(1, 10), (2, 50), (3, 200), (4, 1)])
def test_zipf_streams(seed: int, k: int) -> None:
    stream = zipf(seed, 20_000, 5_000)
    summary = summarize(stream, k)
    true = exact(stream)
    assert_guarantee(summary, true)
    assert len(summary) == k


def churn(k: int) -> list[tuple[str, float]]:
    """k + 1 items round robin: every add evicts the item needed next."""
    return [(f"r{i % (k + 1)}", 1.0) for i in range(40 * (k + 1))]


def heavy_hidden_in_singletons(k: int) -> list[tuple[str, float]]:
    """A heavy item between runs of k + 1 distinct singletons, which push it out while
    its count is among the least."""
    stream: list[tuple[str, float]] = []
    for round_ in range(200):
        stream.append(("heavy", 1.0))
        stream.extend((f"s{round_}-{i}", 1.0) for i in range(k + 1))
    return stream


def late_heavy(k: int) -> list[tuple[str, float]]:
    """Many distinct light items first, then one item with more than total / k."""
    light = [(f"l{i}", 1.0) for i in range(50 * k)]
    return [*light, *[("late", 1.0)] * (10 * k)]


def ascending_weights(k: int) -> list[tuple[str, float]]:
    """Each new item weighs more than the last, and takes the place of a lighter one."""
    return [(f"w{i}", float(i + 1)) for i in range(30 * k)]


def alternating_bursts(k: int) -> list[tuple[str, float]]:
    """Two disjoint groups of k items each, in bursts: each burst evicts the other group."""
    stream: list[tuple[str, float]] = []
    for burst in range(20):
        group = "ab"[burst % 2]
        stream.extend((f"{group}{i}", 1.0) for i in range(k) for _ in range(3))
    return stream


ADVERSARIAL = [churn, heavy_hidden_in_singletons, late_heavy, ascending_weights, alternating_bursts]


@pytest.mark.parametrize("make", ADVERSARIAL)
@pytest.mark.parametrize("k", [1, 2, 7, 32])
def test_adversarial_streams(make: Callable[[int], Stream], k: int) -> None:
    stream = make(k)
    assert_guarantee(summarize(stream, k), exact(stream))


def test_a_late_heavy_item_is_held() -> None:
    stream = late_heavy(10)
    top = summarize(stream, 10).top(1)[0]
    assert top.item == "late"
    assert top.count - top.error <= 100 <= top.count


# --- merges ------------------------------------------------------------------------------


@pytest.mark.parametrize("parts", range(2, 9))
def test_merges_of_several_summaries(parts: int) -> None:
    k = 20
    # Overlapping and disjoint alphabets, different lengths, some parts of larger k.
    streams = [
        zipf(100 + part, 2_000 + 500 * part, 300 + 100 * part, prefix="c-" if part % 2 else "d-")
        for part in range(parts)
    ]
    summaries = [summarize(stream, k + 5 * (part % 3)) for part, stream in enumerate(streams)]
    merged = merge(summaries, k)
    assert merged.k == k
    assert len(merged) == k
    assert_guarantee(merged, exact(*streams))


@pytest.mark.parametrize("parts", range(2, 9))
def test_merges_of_adversarial_summaries(parts: int) -> None:
    k = 8
    streams = [ADVERSARIAL[part % len(ADVERSARIAL)](k + part) for part in range(parts)]
    summaries = [summarize(stream, k + part) for part, stream in enumerate(streams)]
    assert_guarantee(merge(summaries, k), exact(*streams))


def test_merges_of_merges_keep_the_guarantee() -> None:
    streams = [zipf(seed, 1_500, 400) for seed in range(8)]
    summaries = [summarize(stream, 16) for stream in streams]
    halves = [merge(summaries[:4], 16), merge(summaries[4:], 12)]
    assert_guarantee(merge(halves, 12), exact(*streams))


def test_a_merge_of_summaries_not_full_is_exact() -> None:
    merged = merge([summarize([("a", 1), ("b", 2)], 5), summarize([("b", 1), ("c", 4)], 3)], 3)
    assert merged.top() == [Counted("c", 4, 0), Counted("b", 3, 0), Counted("a", 1, 0)]
    assert merged.total == 8


def test_a_merge_counts_a_missing_item_at_the_full_summarys_least_count() -> None:
    full = summarize([("a", 5), ("b", 2)], 2)
    merged = merge([full, summarize([("c", 4)], 2)], 2)
    # c may have had up to 2 in the full summary; b may have had 0 in the other one.
    assert merged.top() == [Counted("c", 6, 2), Counted("a", 5, 0)]
    assert merged.total == 11


def test_a_merge_of_nothing_is_empty() -> None:
    merged = merge([], 4)
    assert (merged.k, merged.total, len(merged)) == (4, 0, 0)


def test_a_merge_into_a_larger_k_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot merge a summary of k=3 into k=4"):
        merge([SpaceSaving(5), SpaceSaving(3)], 4)


def test_a_merged_summary_goes_on_counting() -> None:
    streams = [zipf(seed, 1_000, 200) for seed in (7, 8)]
    merged = merge([summarize(stream, 10) for stream in streams], 10)
    more = zipf(9, 3_000, 200)
    for item, weight in more:
        merged.add(item, weight)
    assert_guarantee(merged, exact(*streams, more))


# --- properties --------------------------------------------------------------------------

ITEMS = st.sampled_from([f"i{n}" for n in range(12)])
STREAMS = st.lists(st.tuples(ITEMS, st.integers(1, 5).map(float)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(stream=STREAMS, k=st.integers(1, 8))
def test_property_guarantee(stream: Stream, k: int) -> None:
    summary = summarize(stream, k)
    assert_guarantee(summary, exact(stream))
    assert SpaceSaving.decode(summary.encode()).top() == summary.top()


@settings(max_examples=200, deadline=None)
@given(
    streams=st.lists(st.tuples(STREAMS, st.integers(0, 3)), min_size=0, max_size=6),
    k=st.integers(1, 6),
    split=st.integers(0, 6),
)
def test_property_merges(streams: list[tuple[Stream, int]], k: int, split: int) -> None:
    summaries = [summarize(stream, k + extra) for stream, extra in streams]
    merged = merge([merge(summaries[:split], k), merge(summaries[split:], k)], k)
    assert_guarantee(merged, exact(*(stream for stream, _ in streams)))
    again = SpaceSaving.decode(merged.encode())
    assert (again.top(), again.total, again.k) == (merged.top(), merged.total, merged.k)


@settings(max_examples=200, deadline=None)
@given(before=STREAMS, after=STREAMS, k=st.integers(1, 6))
def test_property_a_decoded_summary_counts_on_as_the_original(
    before: Stream, after: Stream, k: int
) -> None:
    original = summarize(before, k)
    decoded = SpaceSaving.decode(original.encode())
    for item, weight in after:
        original.add(item, weight)
        decoded.add(item, weight)
    assert decoded.top() == original.top()
    assert decoded.total == original.total


@settings(max_examples=200, deadline=None)
@given(
    stream=st.lists(
        st.tuples(ITEMS, st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)),
        max_size=60,
    ),
    k=st.integers(1, 6),
)
def test_property_fractional_weights_encode_and_decode(stream: Stream, k: int) -> None:
    summary = summarize(stream, k)
    decoded = SpaceSaving.decode(summary.encode())
    assert (decoded.top(), decoded.total) == (summary.top(), summary.total)
    merged = merge([summary, decoded], k)
    SpaceSaving.decode(merged.encode())


# --- encoding ----------------------------------------------------------------------------


def test_encoding_is_compact_json() -> None:
    summary = summarize([("a", 1), ("b", 2), ("é", 1), ("c", 1)], 3)
    assert summary.encode() == (
        b'{"k":3,"total":5.0,"items":[["b",2.0,0.0],["c",2.0,1.0],["\\u00e9",1.0,0.0]]}'
    )
    assert SpaceSaving.decode(summary.encode()).top() == summary.top()


def test_any_string_round_trips() -> None:
    summary = summarize([("\ud800", 1), ("", 2), ('\x00\n"', 3)], 3)
    assert SpaceSaving.decode(summary.encode()).top() == summary.top()


def test_decode_accepts_integers_and_any_order() -> None:
    decoded = SpaceSaving.decode(b'{"items":[["a",1,0],["b",3,1]],"total":4,"k":2}')
    assert decoded.top() == [Counted("b", 3, 1), Counted("a", 1, 0)]
    assert decoded.total == 4.0
    assert isinstance(decoded.total, float)
    assert isinstance(decoded.top()[0].count, float)


def document(**fields: object) -> bytes:
    base: dict[str, object] = {"k": 2, "total": 3, "items": [["a", 2, 0], ["b", 1, 0]]}
    base.update(fields)
    return json.dumps(base).encode()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"k":2,"total":NaN,"items":[]}', "not JSON.*NaN"),
        (b'{"k":2,"total":Infinity,"items":[]}', "not JSON.*Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[]", "must be an object"),
        (b'"k"', "must be an object"),
        (b'{"k":2,"total":0}', "must be an object"),
        (document(extra=1), "must be an object"),
        (document(k=0), "k must be an integer in 1..10000"),
        (document(k=MAX_K + 1), "k must be an integer"),
        (document(k=True), "k must be an integer"),
        (document(k=2.0), "k must be an integer"),
        (document(k="2"), "k must be an integer"),
        (document(total="3"), "total must be a number"),
        (document(total=None), "total must be a number"),
        (document(total=False), "total must be a number"),
        (document(total=-1), "total must be finite and >= 0"),
        (b'{"k":2,"total":1e999,"items":[]}', "total must be finite and >= 0, not inf"),
        (document(total=10**400), "total must be finite and >= 0, not inf"),
        (b'{"k":2,"total":1' + b"0" * 5000 + b',"items":[]}', "not JSON"),
        (document(items={}), "items must be a list of at most k=2"),
        (document(items=[["a", 1, 0], ["b", 1, 0], ["c", 1, 0]]), "at most k=2"),
        (document(items=["a"]), r"must be \[item, count, error\]"),
        (document(items=[["a", 1]]), r"must be \[item, count, error\]"),
        (document(items=[["a", 1, 0, 0]]), r"must be \[item, count, error\]"),
        (document(items=[[1, 1, 0]]), "items must be strings"),
        (document(items=[["x" * (MAX_ITEM + 1), 1, 0]]), "at most 1024 characters"),
        (document(items=[["a", -1, 0]]), "count must be finite and >= 0"),
        (document(items=[["a", "1", 0]]), "count must be a number"),
        (document(items=[["a", 1, -0.5]]), "error must be finite and >= 0"),
        (document(items=[["a", 1, None]]), "error must be a number"),
        (document(items=[["a", 1, 2], ["b", 1, 0]]), "error 2.0 is above its count 1.0"),
        (document(items=[["a", 1, 0], ["a", 1, 0]]), "holds 'a' twice"),
        (document(total=2), "counts sum to 3.0, above its total"),
        (document(k=3, items=[["a", 2, 1], ["b", 1, 0]]), "error while holding fewer than k"),
        (document(items=[["a", 3, 2], ["b", 1, 0]], total=4), "error above its least count"),
    ],
)
def test_malformed_summaries_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SpaceSaving.decode(data)


def test_decode_accepts_the_bounds() -> None:
    items = [[f"{i:04d}" + "x" * (MAX_ITEM - 4), 1, 1] for i in range(MAX_K)]
    data = json.dumps({"k": MAX_K, "total": MAX_K, "items": items}).encode()
    decoded = SpaceSaving.decode(data)
    assert len(decoded) == MAX_K
    assert decoded.floor() == 1
    empty = SpaceSaving.decode(b'{"k":1,"total":0,"items":[]}')
    assert (len(empty), empty.total) == (0, 0)


# --- memory ------------------------------------------------------------------------------


def test_memory_is_fixed_for_a_million_distinct_clients() -> None:
    k = 1_000
    summary = SpaceSaving(k)
    traced: dict[int, int] = {}
    # Coverage's line tracer (the other tests cover ``add``) would make a million adds
    # three times as long: it is set aside meanwhile.
    tracer = sys.gettrace()
    sys.settrace(None)
    tracemalloc.start()
    try:
        for i in range(1_000_000):
            summary.add(f"client-{i}")
            if i + 1 in (k, 100_000, 1_000_000):
                traced[i + 1] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
        sys.settrace(tracer)
    assert len(summary) == k
    assert summary.total == 1_000_000
    # Held k distinct, the summary is at most twice as large a million adds later (its
    # dict and heap settle at their next size), and flat from 100,000 on (what grows is
    # only the names: "client-999999" is a character longer than "client-99999").
    assert traced[1_000_000] <= 2 * traced[k]
    assert traced[1_000_000] - traced[100_000] <= 0.02 * traced[k]
