"""``run_probe`` with fake checks, and the report: exit status, Markdown, JSON, client policy."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from surefoot.client import load_integrations
from surefoot.errors import ConfigurationError
from surefoot.probe import (
    CHECKS,
    BudgetExhausted,
    Check,
    Effect,
    Exchange,
    Finding,
    HttpProbeClient,
    Plan,
    ProbeClient,
    Report,
    Target,
    Verdict,
    integration_policy,
    integration_toml,
    run_probe,
    to_json,
    to_markdown,
    to_table,
)
from surefoot.testing import ManualClock

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:8000"
READ = Target(name="list", method="GET", url=f"{BASE}/charges", checks=("a", "b"))
EFFECT = Effect(method="GET", url=f"{BASE}/charges?c={{{{n}}}}", count="json:data")


def _app() -> Starlette:
    async def any_path(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/{path:path}", any_path, methods=["GET", "POST"])])


def _plan(*targets: Target, **options: Any) -> Plan:
    return Plan(targets=targets, hosts=("127.0.0.1:8000",), **options)


def _sender(verdict: Verdict, *, sends: int = 1, facts: Mapping[str, Any] | None = None) -> Check:
    async def check(client: ProbeClient, target: Target, run: str) -> Finding:
        evidence = []
        for n in range(sends):  # bounded
            evidence.append(await client.send(target.method, client.render(target.url, n)))
        return Finding(
            "fake", target.name, verdict, f"{run}: sent {sends}", "do this", tuple(evidence),
            facts or {},
        )  # fmt: skip

    return check


async def test_checks_run_in_order_and_report_as_they_go(clock: ManualClock) -> None:
    seen: list[str] = []
    writes = Target(name="pay", method="POST", url=f"{BASE}/pay", effect=EFFECT, checks=("a",))
    client = HttpProbeClient(
        hosts=["127.0.0.1:8000"],
        max_requests=10,
        max_duration=60,
        run="run1",
        transport=httpx.ASGITransport(app=_app()),
        clock=clock,
    )
    async with client:
        report = await run_probe(
            _plan(READ, writes),
            client=client,
            checks={"a": _sender(Verdict.PASS), "b": _sender(Verdict.FAIL, sends=2)},
            progress=lambda f: seen.append(f"{f.target}:{f.summary}"),
            clock=clock,
        )
        assert client.remaining() == 6  # the caller's client stays open
    assert seen == ["list:run1: sent 1", "list:run1: sent 2", "pay:run1: sent 1"]
    assert [(f.check, f.verdict) for f in report.findings] == [
        ("fake", Verdict.PASS),
        ("fake", Verdict.FAIL),
        ("fake", Verdict.PASS),
    ]
    assert (report.run, report.requests_sent, report.base_url) == ("run1", 4, BASE)
    assert report.targets == ("list", "pay")
    assert report.key_header == "Idempotency-Key"


async def test_a_spent_budget_ends_the_check_inconclusive_then_skips_the_rest(
    clock: ManualClock,
) -> None:
    ran: list[str] = []

    def recorded(name: str, check: Check) -> Check:
        async def run(client: ProbeClient, target: Target, run_id: str) -> Finding:
            ran.append(name)
            return await check(client, target, run_id)

        return run

    other = Target(name="other", method="GET", url=f"{BASE}/x", checks=("a",))
    checks = {"a": recorded("a", _sender(Verdict.PASS, sends=2)),
              "b": recorded("b", _sender(Verdict.PASS, sends=5))}  # fmt: skip
    report = await run_probe(
        _plan(READ, other, max_requests=4),
        checks=checks,
        transport=httpx.ASGITransport(app=_app()),
        clock=clock,
    )
    assert ran == ["a", "b"]  # nothing more was sent after the budget ran out
    verdicts = [(f.target, f.check, f.verdict) for f in report.findings]
    assert verdicts == [
        ("list", "fake", Verdict.PASS),
        ("list", "b", Verdict.INCONCLUSIVE),
        ("other", "a", Verdict.SKIPPED),
    ]
    assert "cap of 4 requests" in report.findings[1].summary
    assert "budget was spent" in report.findings[2].summary
    assert report.requests_sent == 4
    assert report.exit_status == 3  # nothing failed, but a check could not tell


async def test_unsafe_unknown_and_broken_checks(clock: ManualClock) -> None:
    async def broken(client: ProbeClient, target: Target, run: str) -> Finding:
        raise ValueError("no JSON in the answer")

    async def outside(client: ProbeClient, target: Target, run: str) -> Finding:
        await client.send("GET", "http://10.1.2.3:80/")
        raise AssertionError("unreachable")

    blind = Target(name="blind", method="POST", url=f"{BASE}/pay", checks=("a",))
    read = Target(name="read", method="GET", url=f"{BASE}/x", checks=("missing", "c", "d"))
    report = await run_probe(
        _plan(blind, read),
        checks={"a": _sender(Verdict.PASS), "c": broken, "d": outside},
        transport=httpx.ASGITransport(app=_app()),
        clock=clock,
    )
    summaries = [(f.check, f.verdict, f.summary) for f in report.findings]
    assert summaries == [
        ("a", Verdict.SKIPPED, "not run: the target writes and has no effect check"),
        ("missing", Verdict.SKIPPED, "not run: this surefoot has no check 'missing'"),
        ("c", Verdict.INCONCLUSIVE,
         "the check could not finish: ValueError: no JSON in the answer"),
        ("d", Verdict.INCONCLUSIVE,
         "the check could not finish: HostRefused: the probe may not send to '10.1.2.3:80': "
         "not in probe.hosts (127.0.0.1:8000)"),
    ]  # fmt: skip
    assert report.requests_sent == 0
    accepted = await run_probe(
        _plan(blind),
        checks={"a": _sender(Verdict.PASS)},
        accept_side_effects=True,
        transport=httpx.ASGITransport(app=_app()),
        clock=clock,
    )
    assert accepted.findings[0].verdict is Verdict.PASS


async def test_a_budget_met_by_a_client_without_a_count(clock: ManualClock) -> None:
    class Tired:
        """A ``ProbeClient`` whose budget is already spent."""

        async def send(self, method: str, url: str, **options: Any) -> Exchange:
            raise BudgetExhausted("spent")

        async def wait(self, seconds: float) -> None:
            raise BudgetExhausted("spent")

        def render(self, template: str, n: int) -> str:
            return template.replace("{{run}}", "tired")

        def remaining(self) -> int:
            return 0

    report = await run_probe(
        _plan(READ), client=Tired(), checks={"a": _sender(Verdict.PASS)}, clock=clock
    )
    assert [f.verdict for f in report.findings] == [Verdict.INCONCLUSIVE, Verdict.SKIPPED]
    assert (report.run, report.requests_sent) == ("tired", 0)


def test_the_registry_holds_the_checks_of_the_file() -> None:
    from surefoot.probe._schema import CHECK_NAMES

    assert set(CHECKS) <= set(CHECK_NAMES)


# -- the report ------------------------------------------------------------------------------


def _exchange(status: int | None = 201, body: str = '{"id": "ch_1"}') -> Exchange:
    return Exchange(
        method="POST",
        url=f"{BASE}/charges",
        request_headers=(("authorization", "***"), ("idempotency-key", "k1")),
        request_body='{"amount": 1}',
        status=status,
        response_headers=(("content-type", "application/json"),),
        response_body=body,
        seconds=0.25,
        error=None if status else "cut by the probe",
    )


def _bare() -> Exchange:
    return Exchange("GET", f"{BASE}/x", (), "", 204, (), "", 0.0)


def _report(*findings: tuple[str, Verdict], **options: Any) -> Report:
    made = tuple(
        Finding(check, "pay", verdict, f"{check} | {verdict.value}", f"advice on {check}")
        for check, verdict in findings
    )
    return Report(findings=made, run="r1", base_url=BASE, targets=("pay",), **options)


@pytest.mark.parametrize(
    ("required", "expected"),
    [(None, 1), (("replay",), 1), (("mismatch",), 3), (("no_key",), 3), ((), 0)],
)
def test_the_exit_status_follows_the_required_checks(
    required: tuple[str, ...] | None, expected: int
) -> None:
    report = _report(
        ("replay", Verdict.FAIL),
        ("mismatch", Verdict.INCONCLUSIVE),
        ("no_key", Verdict.SKIPPED),
        required=required,
    )
    assert report.exit_status == expected
    assert report.counts() == {"pass": 0, "fail": 1, "inconclusive": 1, "skipped": 1}


def test_an_unproven_required_check_exits_3_and_says_which() -> None:
    report = _report(("replay", Verdict.INCONCLUSIVE), ("mismatch", Verdict.SKIPPED))
    assert (report.failed, report.exit_status) == ((), 3)
    assert report.verdict_line() == (
        "required checks did not pass (none failed): pay: replay (inconclusive)"
    )
    named = _report(("replay", Verdict.PASS), ("mismatch", Verdict.SKIPPED),
                    required=("mismatch", "concurrent"))  # fmt: skip
    assert named.exit_status == 3
    assert named.verdict_line() == (
        "required checks did not pass (none failed): pay: mismatch (skipped), concurrent (not run)"
    )
    assert "Result: NOT PROVEN" in to_markdown(named)
    skipped_only = _report(("replay", Verdict.PASS), ("mismatch", Verdict.SKIPPED))
    assert (skipped_only.exit_status, skipped_only.verdict_line()) == (0, "")
    failed = _report(("replay", Verdict.FAIL), ("mismatch", Verdict.INCONCLUSIVE))
    assert failed.verdict_line() == "required checks failed: pay: replay"


def test_finding_looks_a_check_up() -> None:
    report = _report(("replay", Verdict.PASS), ("mismatch", Verdict.FAIL))
    assert report.finding("mismatch") is report.findings[1]
    assert report.finding("replay", "pay") is report.findings[0]
    assert report.finding("replay", "other") is None


def test_markdown_has_the_table_the_advice_and_the_evidence() -> None:
    finding = Finding(
        "lost_response", "pay", Verdict.FAIL, "two effects", "never retry it automatically",
        (_exchange(None), _exchange(body="```\nfenced"), _bare()),
        {"effects": 2, "statuses": (201,)},
    )  # fmt: skip
    report = Report(findings=(finding,), run="r1", source="probe.toml", base_url=BASE,
                    targets=("pay",), requests_sent=3, max_requests=10, duration=1.25)  # fmt: skip
    text = to_markdown(report)
    assert text.startswith("# Probe report: pay\n")
    assert "Run `r1` of `probe.toml` against http://127.0.0.1:8000." in text
    assert "3 requests sent (cap 10) in 1.2 s." in text
    assert "Result: FAILED (0 pass, 1 fail, 0 inconclusive, 0 skipped)." in text
    assert "| pay | lost_response | FAIL | two effects |" in text
    assert "What to do: never retry it automatically" in text
    assert "- effects: `2`" in text
    assert "- statuses: `[201]`" in text
    assert "no answer: cut by the probe" in text
    assert "````http\nPOST http://127.0.0.1:8000/charges" in text  # a fence longer than ```
    assert "201 (0.250 s)" in text
    assert "authorization: ***" in text
    assert f"GET {BASE}/x\n\n->\n\n204 (0.000 s)\n```" in text
    short = to_markdown(report, evidence=False)
    assert "Evidence" not in short
    assert "| pay | lost_response |" in short


def test_markdown_escapes_table_cells_and_passes() -> None:
    text = to_markdown(_report(("replay", Verdict.PASS)))
    assert "| pay | replay | pass | replay \\| pass |" in text
    assert "Result: passed" in text
    empty = to_markdown(Report(findings=()))
    assert empty.startswith("# Probe report: no target\n")
    assert "against no host" in empty


def test_json_holds_every_finding_with_its_evidence() -> None:
    facts = {"effects": 2, "nan": float("nan"), "set": {3}, "nested": {"a": (1, 2)}, "x": Path("p")}
    finding = Finding("replay", "pay", Verdict.FAIL, "s", "a", (_exchange(),), facts)
    document = json.loads(to_json(Report(findings=(finding,), required=("replay",))))
    assert document["exit_status"] == 1
    assert document["required"] == ["replay"]
    assert document["counts"]["fail"] == 1
    (found,) = document["findings"]
    assert found["verdict"] == "fail"
    assert found["facts"] == {"effects": 2, "nan": "nan", "set": [3], "nested": {"a": [1, 2]},
                              "x": "p"}  # fmt: skip
    assert found["evidence"][0]["request_headers"] == [["authorization", "***"],
                                                       ["idempotency-key", "k1"]]  # fmt: skip
    assert found["evidence"][0]["status"] == 201
    assert json.loads(to_json(Report(findings=())))["required"] is None


def test_the_terminal_table_shows_each_finding() -> None:
    console = Console(width=200, record=True, color_system=None)
    report = _report(
        ("replay", Verdict.PASS),
        ("mismatch", Verdict.FAIL),
        ("no_key", Verdict.SKIPPED),
        ("concurrent", Verdict.INCONCLUSIVE),
    )
    console.print(to_table(report))
    text = console.export_text()
    assert "surefoot probe" in text
    for word in ("replay", "pass", "FAIL", "skipped", "inconclusive", "advice on mismatch"):
        assert word in text


# -- the client policy -----------------------------------------------------------------------

SAFE = (("replay", Verdict.PASS), ("lost_response", Verdict.PASS), ("concurrent", Verdict.PASS))


def test_a_partner_that_deduplicates_gets_automatic_keys() -> None:
    table = integration_policy(_report(*SAFE, ("retry_after", Verdict.PASS)), "pay")
    assert table == {"base_url": BASE, "auto_idempotency_key": True}


def test_a_custom_key_header_is_kept() -> None:
    report = _report(*SAFE, ("retry_after", Verdict.PASS), key_header="X-Request-Id")
    table = integration_policy(report, "pay", base_url="https://api.example")
    assert table == {
        "base_url": "https://api.example",
        "auto_idempotency_key": True,
        "idempotency_header": "X-Request-Id",
    }


@pytest.mark.parametrize(
    "findings",
    [
        SAFE[:2],  # concurrent not run
        (*SAFE[:2], ("concurrent", Verdict.INCONCLUSIVE)),
        (*SAFE, ("replay", Verdict.FAIL)),  # a second target failed
    ],
)
def test_post_is_never_retried_unless_every_check_passed(
    findings: tuple[tuple[str, Verdict], ...],
) -> None:
    table = integration_policy(_report(*findings, ("retry_after", Verdict.PASS)), "pay")
    assert table["auto_idempotency_key"] is False
    assert table["retry"]["idempotent_methods"] == ["DELETE", "GET", "HEAD", "OPTIONS", "PUT",
                                                    "TRACE"]  # fmt: skip
    failed = any(verdict is Verdict.FAIL for _, verdict in findings)
    assert table["retry"].get("max_attempts") == (1 if failed else None)


@pytest.mark.parametrize("verdict", [Verdict.FAIL, Verdict.INCONCLUSIVE, None])
def test_retry_after_is_honoured_only_when_found_honest(verdict: Verdict | None) -> None:
    findings = SAFE if verdict is None else (*SAFE, ("retry_after", verdict))
    table = integration_policy(_report(*findings), "pay")
    assert table["retry"] == {"retry_statuses": [408, 425, 500, 502, 503, 504]}


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"limit": 5, "window": 1.0}, "5/1 seconds"),
        ({"policy": {"default": {"q": 100, "w": 60}}}, "100/60 seconds"),
        ({"limit": True, "window": 1, "policy": {"p": "x", "q": {"q": 10, "w": 0.4}}},
         "10/1 seconds"),
        ({"limit": 5}, None),
        ({"policy": {"burst": {"q": 0, "w": 1}}}, None),
        ({"limit": 5, "window": float("inf")}, None),
    ],
)  # fmt: skip
def test_a_throttle_at_the_observed_limit(facts: dict[str, Any], expected: str | None) -> None:
    observed = Finding("rate_limit_headers", "list", Verdict.PASS, "s", "a", facts=facts)
    other = Finding("retry_after", "list", Verdict.PASS, "s", "a", facts={"limit": 1, "window": 1})
    report = Report(findings=(other, observed), base_url=BASE)
    table = integration_policy(report, "pay")
    assert table.get("throttle") == (None if expected is None else {"limit": expected})


def test_the_policy_file_is_loaded_by_the_client(tmp_path: Path) -> None:
    limits = Finding("rate_limit_headers", "pay", Verdict.PASS, "s", "a",
                     facts={"limit": 5, "window": 1})  # fmt: skip
    unsafe = _report(("replay", Verdict.FAIL), ("retry_after", Verdict.FAIL), source="probe.toml")
    unsafe = Report(
        findings=(*unsafe.findings, limits), run="r1", source="probe.toml", base_url=BASE
    )
    path = tmp_path / "integrations.toml"
    path.write_text(integration_toml(unsafe, "legacy-payments"))
    text = path.read_text()
    assert "# NOT: POST is retried with an automatic key: replay fail, lost_response not run" in (
        text
    )
    assert "# NOT: Retry-After is honoured: retry_after fail" in text
    legacy = load_integrations(path)["legacy-payments"]
    assert legacy.base_url == BASE
    assert legacy.auto_idempotency_key is False
    assert "POST" not in legacy.retry.idempotent_methods
    assert 429 not in legacy.retry.retry_statuses
    assert legacy.throttle is not None

    path.write_text(integration_toml(_report(*SAFE, ("retry_after", Verdict.PASS)), "pay_v2"))
    trusted = load_integrations(path)["pay_v2"]
    assert trusted.auto_idempotency_key is True
    assert 429 in trusted.retry.retry_statuses
    assert trusted.throttle is None
    with pytest.raises(ConfigurationError, match=r"integration_toml\.name: expected letters"):
        integration_toml(unsafe, "pay.v2")


# -- review fixes ------------------------------------------------------------------------------


def _attempts(policy: str, tmp_path: Path, method: str, headers: dict[str, str]) -> int:
    """Attempts the client of the ``policy`` file makes against a partner answering 503."""
    path = tmp_path / "integrations.toml"
    path.write_text(policy)
    (integration,) = load_integrations(path).values()
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503)

    with integration.client(inner=httpx.MockTransport(handler), sleep=lambda s: None) as client:
        client.request(method, "/charges", headers=headers, content=b"{}")
    return len(calls)


def _on(target: str, *findings: tuple[str, Verdict]) -> tuple[Finding, ...]:
    return tuple(Finding(check, target, verdict, "s", "a") for check, verdict in findings)


@pytest.mark.parametrize(
    ("method", "headers"),
    [("POST", {"Idempotency-Key": "k1"}), ("PUT", {}), ("DELETE", {}), ("PATCH", {"X": "1"})],
)
def test_no_request_is_retried_when_a_key_check_failed(
    tmp_path: Path, method: str, headers: dict[str, str]
) -> None:
    checks = ("replay", "lost_response", "concurrent", "no_key")
    report = Report(findings=_on("charges", *((c, Verdict.FAIL) for c in checks)), base_url=BASE)
    policy = integration_toml(report, "partner")
    assert "max_attempts = 1" in policy
    assert _attempts(policy, tmp_path, method, headers) == 1


def test_a_keyed_post_to_a_proven_partner_is_retried(tmp_path: Path) -> None:
    report = Report(findings=_on("charges", *SAFE), base_url=BASE, writes=("charges",))
    policy = integration_toml(report, "partner")
    assert _attempts(policy, tmp_path, "POST", {"Idempotency-Key": "k1"}) == 3


def test_a_write_target_never_key_checked_keeps_automatic_keys_off() -> None:
    proven = _on("charges", *SAFE)
    untested = _on("refunds", ("no_key", Verdict.INCONCLUSIVE))
    assert integration_policy(Report(findings=proven + untested), "p")["auto_idempotency_key"] is (
        False
    )
    listed = Report(findings=proven, writes=("charges", "refunds"))
    assert integration_policy(listed, "p")["auto_idempotency_key"] is False
    assert integration_policy(Report(findings=proven), "p")["auto_idempotency_key"] is True


def test_markdown_facts_cannot_break_out_of_their_code() -> None:
    facts = {"retry_after": "`[/bold]` | **x**", "plain": "ok", "ticks": "``a"}
    finding = Finding("retry_after", "list", Verdict.FAIL, "s", "a", facts=facts)
    text = to_markdown(Report(findings=(finding,)))
    assert "- retry_after: `` `[/bold]` | **x** ``" in text
    assert "- plain: `ok`" in text
    assert "- ticks: ``` ``a ```" in text


def test_partner_text_in_the_table_is_not_markup() -> None:
    finding = Finding("retry_after", "list", Verdict.FAIL, "Retry-After: [/bold] [red]x[/red]",
                      "[link=http://evil]click[/link]")  # fmt: skip
    console = Console(width=200, record=True, color_system=None)
    console.print(to_table(Report(findings=(finding,))))
    text = console.export_text()
    assert "Retry-After: [/bold] [red]x[/red]" in text
    assert "[link=http://evil]click[/link]" in text


def test_json_evidence_holds_the_cut_status() -> None:
    cut = Exchange("POST", f"{BASE}/c", (), "", None, (), "", 0.0, "cut by the probe", 201)
    finding = Finding("lost_response", "pay", Verdict.PASS, "s", "a", (cut,))
    (found,) = json.loads(to_json(Report(findings=(finding,))))["findings"]
    assert found["evidence"][0]["cut_status"] == 201


async def test_the_report_base_url_holds_no_secret(clock: ManualClock) -> None:
    target = Target(name="list", method="GET", url="http://127.0.0.1:8000/x", checks=("a",))
    report = await run_probe(
        _plan(target, secrets=("127.0.0.1",)),
        checks={"a": _sender(Verdict.PASS, sends=0)},
        transport=httpx.ASGITransport(app=_app()),
        clock=clock,
    )
    assert report.base_url == "http://***:8000"
