"""Drills: the files are sound, scoring ranks answers sensibly, and verify works on the real lab.

Unit tests read the drill files against the repository (alert rules, fault kinds, services,
load shapes). The integration tests run drills against the native lab (real services,
Prometheus, Alertmanager); every wait is a poll with a deadline.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from labctl import cli
from labctl.config import SERVICES, LabError, Ports
from labctl.drills import blind
from labctl.drills import verify as drill_verify
from labctl.drills.common import command, find_drill
from labctl.drills.data_check import check_data, parse_ts
from labctl.drills.journal import DataCheck
from labctl.drills.model import (
    CAPACITY,
    NO_INCIDENT,
    Drill,
    NativeStep,
    load_drill,
    load_drills,
    problems,
    rule_alerts,
    shapes,
)
from labctl.drills.native_steps import Window, check_metrics
from labctl.drills.prometheus import AlertRecord, AlertTracker, Prometheus
from labctl.drills.runner import DrillRunner, interruptible
from labctl.drills.scoring import WRONG_GUESS_COST, Guess, score
from labctl.drills.verdict import EVIDENCE_SECONDS, evaluate, settled, time_to_detect
from labctl.native.lab import NativeLab
from labctl.slo.spec import load_spec
from services.fault_spec import FAULT_KINDS, MODELS, applies
from services.kit.metrics import LATENCY_BUCKETS

DRILLS = load_drills()
REQUIRED = {
    "payment-latency",
    "payment-errors",
    "payment-hang",
    "order-db-pool-exhaustion",
    "notification-backlog",
    "auth-401-storm",
    "crash",
    "bad-release",
    "cpu-burn",
    "memory-growth",
    "retry-storm",
    "no-incident",
}


# ----------------------------------------------------------------------- drill files


def test_every_required_drill_exists() -> None:
    assert len(DRILLS) >= 12
    assert REQUIRED <= set(DRILLS), sorted(REQUIRED - set(DRILLS))


@pytest.mark.parametrize("drill_id", sorted(DRILLS))
def test_drill_references_real_things(drill_id: str) -> None:
    drill = DRILLS[drill_id]
    assert problems(drill, rule_alerts(), shapes()) == []


@pytest.mark.parametrize("drill_id", sorted(DRILLS))
def test_drill_is_short_enough_for_ci(drill_id: str) -> None:
    drill = DRILLS[drill_id]
    assert drill.load.duration <= 300
    for step in drill.timeline:
        assert 60 <= step.for_ <= 300, "faults last 1-5 minutes in the lab profile"
    for expected in drill.expected_alerts:
        assert expected.within <= drill.load.duration - (drill.fault_start or 0)


# Words that name a fault kind (or point straight at it) in a title or briefing.
KIND_WORDS = {
    "latency": ("latency",),
    "error": ("error rate", "injected"),
    "hang": ("hang", "hung"),
    "cpu_burn": ("cpu burn", "busy loop"),
    "memory_growth": ("memory", "leak", "rss", "oom"),
    "gc_pause": ("garbage", "gc", "collect", "heap", "memory"),
    "db_pool_exhaustion": ("pool", "database", "connection"),
    "db_lock": ("lock", "database", "query", "transaction", "batch"),
    "worker_stall": ("worker", "stall", "queue", "backlog"),
    "crash": ("crash", "exited", "killed"),
    "bad_release": ("release", "deploy", "changed", "version", "rollout"),
    "signing_key_mismatch": ("signing", "key", "jwt", "secret"),
    CAPACITY: ("capacity", "traffic", "spike", "load", "campaign", "busy"),
}
# Status phrases a shopper reads on an error page; they name no service of the lab.
STATUS_PHRASES = re.compile(r"bad gateway|gateway timeout")


def giveaways(title: str, briefing: str, kind: str) -> list[str]:
    """What in a drill's title or briefing names a service or the answer's kind."""
    text = STATUS_PHRASES.sub("", f"{title}\n{briefing}".lower())
    found = [s for s in SERVICES if re.search(rf"\b{s}s?\b", text)]
    words = (kind.replace("_", " "), kind, *KIND_WORDS.get(kind, ()))
    return found + [w for w in words if re.search(rf"\b{re.escape(w)}", text)]


def test_every_answer_kind_has_its_giveaway_words() -> None:
    assert set(KIND_WORDS) == {*FAULT_KINDS, CAPACITY}


def test_the_giveaway_check_catches_a_named_service_or_kind() -> None:
    assert giveaways("Payments failing", "", "error") == ["payment"]
    assert giveaways("A slow leak", "", "memory_growth") == ["leak"]
    assert giveaways("x", "Nobody admits to having changed anything.", "bad_release") == ["changed"]
    assert giveaways("x", "checkouts fail with bad gateway", "error") == []


@pytest.mark.parametrize("drill_id", sorted(DRILLS))
def test_title_and_briefing_give_symptoms_not_the_answer(drill_id: str) -> None:
    """`make drills` lists titles and a blind drill prints its briefing: by symptoms only, no
    service of the lab named (not even by elimination) and no word of the answer's kind."""
    drill = DRILLS[drill_id]
    assert giveaways(drill.title, drill.briefing, drill.answer.kind) == [], drill_id


def test_the_no_incident_drill_injects_nothing_and_forbids_every_alert() -> None:
    drill = DRILLS["no-incident"]
    assert drill.timeline == []
    assert (drill.answer.service, drill.answer.kind) == (NO_INCIDENT, NO_INCIDENT)
    assert drill.silent_alerts == "others" and not drill.allowed_alerts
    assert all(drill.is_silent(name) for name in rule_alerts())


def latency_bucket_width(seconds: float, edges: tuple[float, ...]) -> float:
    """Width of the histogram bucket a latency of `seconds` lands in."""
    upper = next(e for e in edges if e >= seconds)
    return upper - max((e for e in edges if e < seconds), default=0.0)


def test_latency_buckets_resolve_every_latency_fault_of_the_drills() -> None:
    """A p99 read off the histogram lands near the injected latency: the bucket the fault falls
    in is at most a third of the fault wide (one 1-2.5 s bucket read a 1.2 s fault as ~2.4 s)."""
    faults = [
        (drill.id, step.fault.ms / 1000)
        for drill in DRILLS.values()
        for step in drill.timeline
        if step.kind == "latency"
    ]
    assert len(faults) >= 2, faults
    for drill_id, seconds in faults:
        width = latency_bucket_width(seconds, LATENCY_BUCKETS)
        assert width <= seconds / 3, f"{drill_id}: {seconds}s falls in a {width:.2f}s bucket"
    for slo in load_spec().slos:  # and a latency SLO's threshold is a bucket edge
        if slo.sli.metric == "http_request_duration_seconds":
            assert slo.sli.threshold in LATENCY_BUCKETS, slo.name
    coarse = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    assert latency_bucket_width(1.2, coarse) > 1.2 / 3  # the check fails on the old buckets


def test_static_kind_rules_match_the_service_restrictions() -> None:
    assert set(MODELS) == set(FAULT_KINDS)
    assert applies("worker_stall", "notification")
    assert not applies("worker_stall", "payment")
    assert not applies("signing_key_mismatch", "gateway")
    assert applies("db_pool_exhaustion", "order")
    assert not applies("db_pool_exhaustion", "gateway")
    assert all(applies("latency", s) for s in SERVICES)


def _write(tmp_path: Path, drill_id: str, text: str) -> Path:
    path = tmp_path / f"{drill_id}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
id: {id}
title: t
difficulty: easy
briefing: b
load: {{shape: steady, users: 5, duration: 200}}
timeline:
  - {{service: {service}, at: 10, for: 100, fault: {{kind: {kind}}}}}
expected_alerts:
  - {{alert: {alert}, within: 60}}
answer: {{service: {service}, kind: {kind}}}
hints: [{{text: h, cost: 5}}]
debrief:
  summary: s
  evidence: [{{kind: promql, where: w, what: x}}]
  native:
    - {{pillar: metrics, run: up, finds: x}}
    - {{pillar: traces, run: labctl traces, finds: x}}
    - {{pillar: logs, run: labctl logs, finds: x}}
"""


def test_a_drill_with_a_made_up_alert_or_misplaced_kind_is_reported(tmp_path: Path) -> None:
    bad = load_drill(
        _write(
            tmp_path,
            "bad",
            BASE.format(id="bad", service="payment", kind="worker_stall", alert="NoSuchAlert"),
        )
    )
    found = problems(bad, rule_alerts(), shapes())
    assert "unknown alert 'NoSuchAlert'" in found
    assert "fault kind 'worker_stall' does not apply to 'payment'" in found


def test_schema_rejects_unknown_fields_and_faults_outlasting_the_load(tmp_path: Path) -> None:
    text = BASE.format(id="x", service="payment", kind="error", alert="ServiceDown")
    with pytest.raises(ValidationError, match="extra"):
        load_drill(_write(tmp_path, "x", text + "surprise: 1\n"))
    with pytest.raises(ValidationError, match="after the load"):
        load_drill(_write(tmp_path, "x", text.replace("for: 100", "for: 500")))
    with pytest.raises(ValueError, match="differs from the file name"):
        load_drill(_write(tmp_path, "y", text))


def test_a_misspelt_or_made_up_fault_fails_at_load_not_forty_seconds_into_a_run(
    tmp_path: Path,
) -> None:
    """The drill's fault is the admin API's own model (services.fault_spec): same checks."""
    good = BASE.format(id="x", service="payment", kind="latency", alert="ServiceDown")
    good = good.replace("{kind: latency}", "{kind: latency, ms: 400, jitter_ms: 50}")
    step = load_drill(_write(tmp_path, "x", good)).timeline[0]
    assert step.body() == {"kind": "latency", "ms": 400, "jitter_ms": 50}  # defaults not sent
    with pytest.raises(ValidationError, match="jiter_ms"):
        load_drill(_write(tmp_path, "x", good.replace("jitter_ms", "jiter_ms")))
    with pytest.raises(ValidationError, match="ms"):
        load_drill(_write(tmp_path, "x", good.replace("ms: 400, ", "")))  # latency needs ms
    with pytest.raises(ValidationError, match="slow"):
        load_drill(_write(tmp_path, "x", good.replace("kind: latency,", "kind: slow,")))


# --------------------------------------------------------------------------- scoring


def _score(*guesses: tuple[str, str, float], hints: list[int] | None = None) -> int:
    g = [Guess(s, k, 1000 + t) for s, k, t in guesses]
    return score(g, "payment", "latency", 1000, hint_costs=hints).total


def test_right_and_fast_beats_right_and_slow_beats_half_right_beats_wrong() -> None:
    fast = _score(("payment", "latency", 60))
    slow = _score(("payment", "latency", 800))
    half = _score(("payment", "error", 60))
    wrong = _score(("order", "latency", 60))
    assert fast > slow > half > wrong
    assert fast == 100 and wrong == 0


def test_hints_cost_points() -> None:
    assert (
        _score(("payment", "latency", 60), hints=[10, 15])
        == _score(("payment", "latency", 60)) - 25
    )


def test_several_guesses_score_less_than_one() -> None:
    one = _score(("payment", "latency", 60))
    shotgun = _score(("order", "latency", 30), ("payment", "error", 45), ("payment", "latency", 60))
    assert shotgun == one - 2 * WRONG_GUESS_COST
    assert shotgun < one


def test_no_incident_is_scored_like_any_answer() -> None:
    right = score([Guess("none", "none", 100)], "none", "none", 90).total
    alarmist = score([Guess("payment", "latency", 100)], "none", "none", 90).total
    assert right == 100 and alarmist == 0


# ------------------------------------------------------------------ verdict and data


class _FakeTracker(AlertTracker):
    def __init__(self, records: list[AlertRecord]) -> None:
        self.records = {(r.name, tuple(sorted(r.labels.items()))): r for r in records}
        self.pending = []
        self.errors = 0


def _record(name: str, fired: float, carried: bool = False, **labels: str) -> AlertRecord:
    labels = {"alertname": name, "severity": "page", **labels}
    return AlertRecord(name, labels, fired - 30, fired, [[fired, fired + 60]], carried)


def test_a_verify_run_ends_once_every_expected_alert_fired_and_not_before() -> None:
    drill = DRILLS["payment-errors"]
    t0 = 1_000_000.0
    start = t0 + (drill.fault_start or 0)
    page = _record("CheckoutAvailabilityBudgetBurnPage", start + 10, service="gateway")
    ratio = _record("ServiceHigh5xxRatio", start + 60, service="payment")
    after = (drill.fault_start or 0) + EVIDENCE_SECONDS + 5
    assert settled(drill, _FakeTracker([page, ratio]), t0, after)
    # One expected alert still missing, or on another service: the run goes on.
    assert not settled(drill, _FakeTracker([page]), t0, after)
    other = _record("ServiceHigh5xxRatio", start + 60, service="order")
    assert not settled(drill, _FakeTracker([page, other]), t0, after)
    # Fired past its bound: the verdict is a FAIL, and the load runs its whole length.
    late = _record("ServiceHigh5xxRatio", start + 200, service="payment")
    assert not settled(drill, _FakeTracker([page, late]), t0, (drill.fault_start or 0) + 210)
    # Both fired at once: the debrief's evidence still gets EVIDENCE_SECONDS of fault.
    quick = [page, _record("ServiceHigh5xxRatio", start + 5, service="payment")]
    early = (drill.fault_start or 0) + EVIDENCE_SECONDS - 1
    assert not settled(drill, _FakeTracker(quick), t0, early)
    assert settled(drill, _FakeTracker(quick), t0, early + 2)
    # A drill expecting no alert is never cut short; nor is one whose second fault is to come.
    assert not settled(DRILLS["no-incident"], _FakeTracker([]), t0, 170)
    spike = _record("CheckoutLatencyBudgetBurnPage", t0 + 70, service="gateway")
    assert not settled(DRILLS["traffic-spike"], _FakeTracker([spike]), t0, 200)
    herring = DRILLS["deploy-red-herring"]
    last = max(step.at for step in herring.timeline)
    assert not settled(herring, _FakeTracker([]), t0, last - 1)


def test_a_series_peak_ignores_nan() -> None:
    """histogram_quantile of a route without requests is NaN: it must not be the highest."""
    from labctl.drills.native_steps import series_peak

    assert series_peak([[1, "NaN"], [2, "0.8"], [3, "0.2"]]) == 0.8
    assert series_peak([[1, "NaN"], [2, "NaN"]]) is None
    assert series_peak([[1, "3"], [2, "+Inf"]]) == float("inf")


def test_verify_shortens_the_baseline_of_a_steady_drill_only() -> None:
    drill = DRILLS["payment-errors"]
    short = drill_verify.shortened(drill)
    shift = (drill.fault_start or 0) - drill_verify.VERIFY_BASELINE
    assert shift > 0 and short.fault_start == drill_verify.VERIFY_BASELINE
    assert short.load.duration == drill.load.duration - shift
    assert [s.for_ for s in short.timeline] == [s.for_ for s in drill.timeline]
    herring = drill_verify.shortened(DRILLS["deploy-red-herring"])
    gaps = [s.at - herring.fault_start for s in herring.timeline]
    assert gaps == [s.at - DRILLS["deploy-red-herring"].fault_start
                    for s in DRILLS["deploy-red-herring"].timeline]  # fmt: skip
    # A shaped load's phases are the drill, and a drill without faults has no baseline to cut.
    assert drill_verify.shortened(DRILLS["traffic-spike"]) is DRILLS["traffic-spike"]
    assert drill_verify.shortened(DRILLS["no-incident"]) is DRILLS["no-incident"]
    assert DRILLS["payment-errors"].fault_start == drill.fault_start  # the original is untouched


@pytest.mark.integration
def test_verify_waits_until_no_service_serves_a_request(tmp_path) -> None:
    """wait_idle on a real payment holding a charge (a hang fault): it returns only once that
    request has been answered, so its late 5xx cannot land in the next drill's Prometheus."""
    from types import SimpleNamespace

    from tests.support import ADMIN, INTERNAL, running_services, wait_until

    charge = {"order_id": "o1", "amount_cents": 500, "currency": "EUR",
              "card_number": "4242424242424242"}  # fmt: skip
    with running_services(tmp_path, names=("payment",)) as lab:
        url = lab.url("payment")
        target = SimpleNamespace(urls={"payment": url})
        drill_verify.wait_idle(target, print)  # idle: returns at once
        fault = {"kind": "hang", "seconds": 3, "route": "/payments/charge"}
        r = httpx.post(f"{url}/admin/faults", json={"fault": fault}, headers=ADMIN, timeout=5)
        assert r.status_code == 201, r.text
        answered: list[int] = []

        def held_charge() -> None:
            headers = {**INTERNAL, "Idempotency-Key": "held"}
            r = httpx.post(f"{url}/payments/charge", json=charge, headers=headers, timeout=30)
            answered.append(r.status_code)

        worker = threading.Thread(target=held_charge)
        worker.start()
        wait_until(lambda: (drill_verify.in_flight(url) or 0) >= 1, timeout=10, what="in flight")
        notes: list[str] = []
        drill_verify.wait_idle(target, notes.append)
        assert drill_verify.in_flight(url) == 0 and notes == [], notes  # the hold is over
        worker.join(timeout=30)
        assert answered == [201], answered


def test_verdict_needs_expected_alerts_within_bound_and_no_forbidden_alert() -> None:
    drill = DRILLS["payment-errors"]
    t0 = 1_000_000.0
    start = t0 + (drill.fault_start or 0)
    good = [
        _record("CheckoutAvailabilityBudgetBurnPage", start + 40, service="gateway"),
        _record("ServiceHigh5xxRatio", start + 90, service="payment"),
        _record("ServiceHigh5xxRatio", start + 95, service="order"),
        _record("ServiceDown", start - 600, carried=True, service="order"),  # an earlier drill's
    ]
    OK = DataCheck(ok=True)
    verdict, failures, rows = evaluate(drill, _FakeTracker(good), t0, OK, False, None)
    assert (verdict, failures) == ("PASS", [])
    assert [r.detected_after for r in rows] == [40, 90]
    assert time_to_detect(drill, _FakeTracker(good), t0) == 40

    late = [*good[:1], _record("ServiceHigh5xxRatio", start + 400, service="payment")]
    verdict, failures, _ = evaluate(drill, _FakeTracker(late), t0, OK, False, None)
    assert verdict == "FAIL" and "fired after 400s" in failures[0]

    wrong_service = [*good[:1], _record("ServiceHigh5xxRatio", start + 90, service="auth")]
    verdict, failures, _ = evaluate(drill, _FakeTracker(wrong_service), t0, OK, False, None)
    assert verdict == "FAIL" and "did not fire" in failures[0]

    noisy = [*good, _record("NotificationDeliveryStalled", start + 30, service="notification")]
    verdict, failures, _ = evaluate(drill, _FakeTracker(noisy), t0, OK, False, None)
    assert verdict == "FAIL" and "forbidden alert fired: NotificationDeliveryStalled" in failures[0]

    lost = DataCheck(ok=False, problems=["1 accepted order(s) missing: ord_x"])
    verdict, failures, _ = evaluate(drill, _FakeTracker(good), t0, lost, False, None)
    assert verdict == "FAIL" and failures == ["data check: 1 accepted order(s) missing: ord_x"]


def _healthy_state() -> dict[str, list[dict]]:
    """Two orders as the services hold them after a clean run: one paid, one declined."""

    def order(order_id, status, key):
        return {"order_id": order_id, "user": "alice", "status": status, "total_cents": 1290,
                "currency": "EUR", "idempotency_key": key, "created_at": 1.0}  # fmt: skip

    def charge(order_id, outcome, amount=1290):
        return {"payment_id": "pay_" + order_id, "order_id": order_id, "outcome": outcome,
                "amount_cents": amount, "currency": "EUR", "created_at": 1.0}  # fmt: skip

    return {
        "orders": [order("o1", "paid", "k1"), order("o2", "payment_failed", "k2")],
        "charges": [charge("o1", "approved"), charge("o2", "declined")],
        "outbox": [{"order_id": "o1", "status": "delivered", "created_at": 1.0}],
        "notifications": [{"order_id": "o1", "status": "delivered", "created_at": 1.0}],
    }


def _broken(change) -> list[str]:
    state = _healthy_state()
    change(state)
    result = check_data({"o1"}, state)
    assert result["ok"] is False
    return result["problems"]


def test_capacity_is_an_answer_for_a_drill_without_faults_that_pages() -> None:
    spike = DRILLS["traffic-spike"]
    assert not spike.timeline and spike.expected_alerts
    assert (spike.answer.service, spike.answer.kind) == (NO_INCIDENT, CAPACITY)
    assert blind.guess_problem("none", "capacity") is None
    assert blind.guess_problem("none", "overload") is not None
    data = DRILLS["no-incident"].model_dump(by_alias=True)
    data["expected_alerts"] = [{"alert": "CheckoutLatencyBudgetBurnPage", "within": 60}]
    with pytest.raises(ValidationError, match="expects no alert"):
        Drill.model_validate(data)
    data["answer"] = {"service": "payment", "kind": "capacity"}
    with pytest.raises(ValidationError, match="none/capacity"):
        Drill.model_validate(data)


def test_a_cascade_drill_fails_when_the_first_alert_names_the_answer() -> None:
    drill = DRILLS["payment-errors"].model_copy(update={"cascade": True})
    t0 = 1_000_000.0
    start = t0 + (drill.fault_start or 0)
    OK = DataCheck(ok=True)
    victim_first = [
        _record("CheckoutAvailabilityBudgetBurnPage", start + 40, service="gateway"),
        _record("ServiceHigh5xxRatio", start + 90, service="payment"),
        _record("ServiceDown", start - 600, carried=True, service="payment"),  # not this run's
    ]
    assert evaluate(drill, _FakeTracker(victim_first), t0, OK, False, None)[0] == "PASS"
    cause_first = [
        _record("CheckoutAvailabilityBudgetBurnPage", start + 45, service="gateway"),
        _record("ServiceHigh5xxRatio", start + 40, service="payment"),
    ]
    verdict, failures, _ = evaluate(drill, _FakeTracker(cause_first), t0, OK, False, None)
    assert verdict == "FAIL" and failures == [
        "cascade: the first alert, ServiceHigh5xxRatio {service=payment}, names the answer's "
        "service payment, not a victim"
    ]


# Not retry-storm: auth's own 5xx ratio is over its threshold seconds after the fault, as the
# gateway's retry ratio is, and both alerts wait 1m, so which fires first is a race (in CI the
# retry storm's became active 33 s after auth's; in the two verify runs before, first).
CASCADES = {"payment-hang", "deploy-red-herring", "confirmations-stuck", "gc-pauses"}


def test_at_least_three_drills_are_cascades_and_verify_checks_them() -> None:
    """The first alert of each is on a victim; `evaluate` (above) fails the run otherwise."""
    assert {d.id for d in DRILLS.values() if d.cascade} == CASCADES


def test_data_check_passes_a_clean_run_and_reports_counts() -> None:
    result = check_data({"o1"}, _healthy_state())
    assert result["ok"] is True, result["problems"]
    assert result["orders_by_status"] == {"paid": 1, "payment_failed": 1}
    assert result["charges_by_outcome"] == {"approved": 1, "declined": 1}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # 1. an approved charge for an order reported failed (the payment-timeout bug)
        (lambda s: s["charges"].__setitem__(1, {**s["charges"][1], "outcome": "approved"}),
         "for an order that is not paid"),
        (lambda s: s["charges"].append({**s["charges"][0], "payment_id": "pay_x"}),
         "charged twice"),
        (lambda s: s["charges"].append({**s["charges"][0], "order_id": "o9"}),
         "without an order"),
        (lambda s: s["charges"].__setitem__(0, {**s["charges"][0], "amount_cents": 2580}),
         "another amount"),
        # 2. a paid order nobody paid for
        (lambda s: s["charges"].pop(0), "paid order(s) without an approved charge"),
        # 3. a paid order whose confirmation was lost
        (lambda s: s["notifications"].clear(), "without a delivered or dead-lettered"),
        # 4. one key, two orders (a double purchase by a retrying shopper)
        (lambda s: s["orders"].append({**s["orders"][1], "order_id": "o3",
                                       "idempotency_key": "k1"}),
         "idempotency key(s) with several orders"),
        # 5. left on its way
        (lambda s: s["orders"].append({**s["orders"][1], "order_id": "o4", "idempotency_key": None,
                                       "status": "payment_unknown"}),
         "still unsettled"),
        (lambda s: s["outbox"].__setitem__(0, {**s["outbox"][0], "status": "pending"}),
         "still in order's outbox"),
        (lambda s: s["notifications"].__setitem__(0, {**s["notifications"][0], "status": "queued"}),
         "still queued"),
        # 6. told 201, but the order is not paid / not there
        (lambda s: s["orders"].__setitem__(0, {**s["orders"][0], "status": "payment_failed"}),
         "accepted order(s) not paid"),
        (lambda s: s["orders"].pop(0), "accepted order(s) missing"),
    ],
)  # fmt: skip
def test_data_check_fails_when_an_invariant_is_broken(change, expected) -> None:
    problems = _broken(change)
    assert any(expected in p for p in problems), problems


def test_a_dead_lettered_confirmation_counts_as_settled() -> None:
    state = _healthy_state()
    state["notifications"].clear()
    state["outbox"][0]["status"] = "dead_lettered"
    assert check_data({"o1"}, state)["ok"] is True


def test_prometheus_timestamps_with_nanoseconds_parse() -> None:
    assert parse_ts("2024-05-01T10:00:00.123456789Z") == pytest.approx(1714557600.123456)
    assert parse_ts("2024-05-01T10:00:00Z") == 1714557600


def test_sigint_during_a_drill_sets_the_stop_flag_instead_of_raising() -> None:
    stop = threading.Event()
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN under nohup/a background job
    with interruptible(stop):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5)
    assert signal.getsignal(signal.SIGINT) is before  # restored, whatever it was


def test_verify_runs_the_no_incident_drill_first_and_blind_picks_are_seeded() -> None:
    order = drill_verify.verify_order(DRILLS, ["payment-latency", "no-incident"])
    assert [d.id for d in order] == ["no-incident", "payment-latency"]
    assert blind.pick(DRILLS, 7).id == blind.pick(DRILLS, 7).id
    assert len({blind.pick(DRILLS, seed).id for seed in range(40)}) > 3


def test_answer_scores_the_blind_drill_and_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(blind, "DRILLS_VAR", tmp_path)
    monkeypatch.setattr(blind, "CURRENT", tmp_path / "current.json")
    now = time.time()
    state = {
        "run_id": "r1", "sealed": blind.seal("payment-latency", "k" * 32), "key": "k" * 32,
        "started_at": now - 100, "fault_start": now - 60, "hints": [], "guesses": [],
        "closed": False,
    }  # fmt: skip
    (tmp_path / "current.json").write_text(json.dumps(state))
    assert "payment" not in (tmp_path / "current.json").read_text()  # not at a glance
    assert cli.main(["drill", "hint"]) == 0
    # typos are refused without costing a guess
    assert cli.main(["drill", "answer", "--service", "paymnt", "--kind", "latency"]) == 2
    assert "unknown service 'paymnt'" in capsys.readouterr().out
    assert cli.main(["drill", "answer", "--service", "payment", "--kind", "slow"]) == 2
    assert "unknown fault kind 'slow'" in capsys.readouterr().out
    assert json.loads((tmp_path / "current.json").read_text())["guesses"] == []
    assert cli.main(["drill", "answer", "--service", "order", "--kind", "latency"]) == 1
    assert "wrong service" in capsys.readouterr().out
    assert cli.main(["drill", "answer", "--service", "payment", "--kind", "latency"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "current.json").read_text())
    assert saved["closed"] and len(saved["guesses"]) == 2
    expected = 100 - DRILLS["payment-latency"].hints[0].cost - WRONG_GUESS_COST
    assert f"Score: {expected}/100" in out
    assert cli.main(["drill", "answer", "--service", "payment", "--kind", "latency"]) == 1


def test_an_unanswered_blind_runs_journal_and_report_stay_sealed_until_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """They name the faults and the expected alerts: not in the run's folder before the answer."""
    from labctl.drills.execute import finish
    from labctl.drills.journal import FaultWindow, Journal
    from labctl.drills.runner import RunResult

    monkeypatch.setattr(blind, "DRILLS_VAR", tmp_path)
    monkeypatch.setattr(blind, "CURRENT", tmp_path / "current.json")
    drill = DRILLS["payment-latency"]
    now = time.time()
    state = {
        "run_id": "r1", "sealed": blind.seal(drill.id, "k" * 32), "key": "k" * 32,
        "started_at": now - 300, "fault_start": now - 260, "hints": [], "guesses": [],
        "closed": False,
    }  # fmt: skip
    (tmp_path / "current.json").write_text(json.dumps(state))
    step = drill.timeline[0]
    journal = Journal(
        run_id="r1", drill=None, lab={}, started_at=now - 300, ended_at=now, load_ended_at=now,
        faults=[FaultWindow(service=step.service, fault=step.body(), at=now - 260, until=now - 60)],
        data_check=DataCheck(ok=True), verdict="PASS",
    )  # fmt: skip
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    finish(RunResult(drill, run_dir, journal, None))  # type: ignore[arg-type]
    assert not (run_dir / "journal.json").exists() and not (run_dir / "report.md").exists()
    sealed = blind.sealed_dir("r1")
    assert json.loads((sealed / "journal.json").read_text())["drill"] == drill.id
    assert blind.journal_dir("r1") == sealed
    assert cli.main(["drill", "answer", "--service", "payment", "--kind", "latency"]) == 0
    capsys.readouterr()
    # Answered: both in the run's folder, with the score; nothing left sealed.
    answered = json.loads((run_dir / "journal.json").read_text())
    assert answered["drill"] == drill.id and answered["score"] and answered["faults"]
    assert (run_dir / "report.md").exists() and not sealed.exists()
    # A run answered while it ran is written to its folder at once.
    (tmp_path / "current.json").write_text(json.dumps({**state, "run_id": "r2", "closed": True}))
    (tmp_path / "r2").mkdir()
    finish(RunResult(drill, tmp_path / "r2", journal.model_copy(update={"run_id": "r2"}), None))  # type: ignore[arg-type]
    assert (tmp_path / "r2" / "journal.json").exists() and not blind.sealed_dir("r2").exists()


def test_a_blind_drills_id_is_in_no_command_line_environment_or_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`blind` hands the drill to its runner on standard input; `run --blind` reads it there."""
    from types import SimpleNamespace

    from labctl.drills import commands

    monkeypatch.setattr(blind, "DRILLS_VAR", tmp_path)
    monkeypatch.setattr(blind, "CURRENT", tmp_path / "current.json")
    lab = SimpleNamespace(unreachable=list, close=lambda: None, where="x")
    monkeypatch.setattr(blind, "open_lab", lambda *_a: lab)
    spawned: dict = {}

    class Runner:
        def __init__(self, argv, **kw):
            spawned.update(argv=argv, env=kw.get("env"), pid=4242)
            self.pid, self.stdin = 4242, self

        def write(self, data: bytes) -> None:
            spawned["stdin"] = spawned.get("stdin", b"") + data

        def close(self) -> None:
            pass

    monkeypatch.setattr(blind.subprocess, "Popen", Runner)
    assert cli.main(["drill", "blind", "--seed", "3"]) == 0
    drill = blind.pick(DRILLS, 3)
    assert spawned["stdin"] == f"{drill.id}\n".encode()
    assert drill.id not in " ".join(spawned["argv"]) and spawned["env"] is None  # inherited
    assert drill.id not in (tmp_path / "current.json").read_text()
    assert blind.unseal(blind.read_current(), DRILLS) is drill
    # ... and the runner reads it from standard input
    ran: dict = {}

    def execute(lab_, drill_, run_id, **kw):
        ran.update(drill=drill_.id, blind=kw["blind"])
        return SimpleNamespace(verdict="PASS")

    monkeypatch.setattr(commands, "execute", execute)
    monkeypatch.setattr(commands, "open_lab", lambda *_a: lab)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{drill.id}\n"))
    assert cli.main(["drill", "run", "--blind", "--run-id", "r9"]) == 0
    assert ran == {"drill": drill.id, "blind": True}


def test_messages_name_the_command_the_user_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through make (MAKELEVEL set) the advice is a make target, else the labctl command."""
    monkeypatch.delenv("MAKELEVEL", raising=False)
    with pytest.raises(LabError, match="`labctl drill list` shows them"):
        find_drill(DRILLS, "nope")
    monkeypatch.setenv("MAKELEVEL", "1")
    with pytest.raises(LabError, match="`make drills` shows them"):
        find_drill(DRILLS, "nope")
    assert command("blind --force") == "make blind FORCE=1"


# ------------------------------------------------------------------------ integration


def _faults(lab: NativeLab, service: str) -> list[dict]:
    resp = httpx.get(
        f"{lab.urls[service]}/admin/faults",
        headers={"Authorization": f"Bearer {lab.admin_token()}"},
        timeout=5,
        trust_env=False,
    )
    return resp.json()["faults"]


@pytest.mark.integration
def test_an_interrupted_drill_clears_its_faults(native_lab: NativeLab, tmp_path: Path) -> None:
    data = DRILLS["payment-latency"].model_dump(by_alias=True)
    data["timeline"][0]["at"] = 1
    data["expected_alerts"] = []
    drill = Drill.model_validate(data)
    stop = threading.Event()
    runner = DrillRunner(native_lab, drill, tmp_path / "run", out=lambda _l: None, stop=stop)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(r=runner.run()), daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while not _faults(native_lab, "payment") and time.monotonic() < deadline:
        stop.wait(0.2)
    assert _faults(native_lab, "payment"), "the drill never injected its fault"
    stop.set()  # what the SIGINT handler does
    worker.join(90)
    runner.close()
    assert not worker.is_alive()
    assert result["r"].journal.interrupted is True
    assert _faults(native_lab, "payment") == []
    assert any(e["event"] == "rollback" for e in result["r"].journal.events)


@pytest.mark.integration
def test_native_metrics_steps_are_valid_promql_and_their_check_can_fail(
    native_lab: NativeLab,
) -> None:
    """Every drill's PromQL step is accepted by the real Prometheus; the check reads the peak of
    each series over the window and fails on the wrong top labels, a low peak or a bad query."""
    prom = Prometheus(native_lab.urls["prometheus"])
    now = time.time()
    window = Window(start=now - 60, end=now)
    try:
        for drill in DRILLS.values():
            for native in drill.debrief.native:
                if native.pillar == "metrics":
                    body = prom.http.get("/api/v1/query", params={"query": native.run}).json()
                    assert body["status"] == "success", (drill.id, native.run, body)
        tagged = 'label_replace(vector(3), "service", "payment", "", "")'

        def metric(run: str = tagged, **expect: object) -> NativeStep:
            return NativeStep(pillar="metrics", run=run, finds="x", expect=expect)

        ok, found = check_metrics(metric(top={"service": "payment"}, min_value=2), prom, window)
        assert ok and "highest 3" in found, found
        assert not check_metrics(metric(top={"service": "order"}), prom, window)[0]
        assert not check_metrics(metric(min_value=4), prom, window)[0]
        assert not check_metrics(metric(max_count=0), prom, window)[0]
        ok, found = check_metrics(metric("sum(rate(x[1m]"), prom, window)
        assert not ok and "refused" in found, found
    finally:
        prom.close()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(3600)  # every drill: measured ~2 min each on 2 shared cores
def test_verify_every_drill_on_the_real_lab(tmp_path: Path) -> None:
    """`make verify`, in CI: every drill, with journal, report and plot.

    On a lab of its own, started as `make verify` starts one (no background Locust, fresh
    data): the session lab carries other tests' traffic, orders and alerts.
    """
    lab = NativeLab(tmp_path / "lab", Ports.any_free(), load=False)
    started = time.monotonic()
    try:
        lab.up()
        chosen = drill_verify.verify_order(DRILLS, None)
        ok, rows = drill_verify.verify(lab, chosen)
        minutes = (time.monotonic() - started) / 60
        print(f"\n{drill_verify.table(rows)}\n{len(rows)} drills: {minutes:.1f} min")
        assert sorted(r.drill for r in rows) == sorted(d.id for d in chosen) == sorted(DRILLS)
        # A drill is an experiment on two shared cores: one that fails runs once more, and
        # must pass then (both tables are printed, so a flaky drill is seen, not hidden).
        failed = [DRILLS[r.drill] for r in rows if r.verdict != "PASS"]
        if not ok:
            again_ok, again = drill_verify.verify(lab, failed)
            print(f"\nrun again:\n{drill_verify.table(again)}")
            assert again_ok, drill_verify.table(rows) + "\nrun again:\n" + drill_verify.table(again)
            rows = [next((a for a in again if a.drill == r.drill), r) for r in rows]
        for row in rows:
            run_dir = Path(row.run_dir)
            journal = json.loads((run_dir / "journal.json").read_text())
            assert journal["data_check"]["ok"] is True
            # Each native step of the debrief ran against the lab and found what it says.
            steps = len(DRILLS[row.drill].debrief.native)
            assert row.steps == f"{steps}/{steps}" and len(journal["native"]) == steps, row
            assert (run_dir / "report.md").exists() and (run_dir / "report.png").exists()
        # The crash drill restarted order on its old port: the lab is whole again.
        assert all(s in lab.urls for s in SERVICES)
    finally:
        lab.down()
        lab.close()


def test_an_interrupted_drill_ends_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or SIGTERM during a drill: the runner cleans up and verify runs no more drills."""
    from types import SimpleNamespace

    seen: list[str] = []

    def fake_execute(lab_, drill, run_id, **_kw):
        seen.append(drill.id)
        journal = SimpleNamespace(
            expected=[], data_check=SimpleNamespace(ok=None), native=[], interrupted=True
        )
        return SimpleNamespace(
            tracker=SimpleNamespace(fired=list), journal=journal, verdict="FAIL",
            failures=["interrupted"], run_dir=Path("x"),
        )  # fmt: skip

    monkeypatch.setattr(drill_verify, "execute", fake_execute)
    lab = SimpleNamespace(unreachable=list)
    ok, rows = drill_verify.verify(lab, [DRILLS["no-incident"], DRILLS["crash"]],
                                   out=lambda _line: None)  # fmt: skip
    assert not ok and seen == ["no-incident"] and [r.verdict for r in rows] == ["FAIL"]


@pytest.mark.integration
def test_verify_rebuilds_a_broken_lab_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drill that leaves the lab broken is an ERROR; the next drill runs on a rebuilt lab."""
    from types import SimpleNamespace

    import psutil

    lab = NativeLab(tmp_path / "lab", Ports.any_free(), load=False, out=lambda _line: None)
    seen: list[tuple[str, list[str]]] = []

    prometheus: list[tuple[int, list[str]]] = []

    def fake_execute(lab_, drill, run_id, **_kw):
        seen.append((drill.id, lab_.missing()))
        entry = json.loads(lab_.state_file.read_text())["components"]["prometheus"]
        data = lab_.runtime_dir / "prometheus" / "data"
        prometheus.append((entry["pid"], sorted(p.name for p in data.glob("01*"))))
        (data / "01STALEBLOCK").mkdir(exist_ok=True)  # what an earlier drill leaves behind
        if len(seen) == 1:  # the first drill kills a service and does not bring it back
            pid = json.loads(lab_.state_file.read_text())["components"]["payment"]["pid"]
            psutil.Process(pid).kill()
            psutil.Process(pid).wait(10)
        journal = SimpleNamespace(
            expected=[], data_check=SimpleNamespace(ok=True), native=[], interrupted=False
        )
        return SimpleNamespace(
            tracker=SimpleNamespace(fired=list), journal=journal, verdict="PASS", failures=[],
            run_dir=tmp_path / run_id,
        )  # fmt: skip

    monkeypatch.setattr(drill_verify, "execute", fake_execute)
    lab.up()
    try:
        ok, rows = drill_verify.verify(lab, [DRILLS["no-incident"], DRILLS["payment-latency"]],
                                    out=lambda _line: None)  # fmt: skip
    finally:
        lab.down()
        lab.close()
    assert [s[1] for s in seen] == [[], []]  # the second drill found the lab whole again
    # Each drill had a Prometheus of its own, started on empty storage.
    assert prometheus[0][0] != prometheus[1][0] and [p[1] for p in prometheus] == [[], []]
    assert not ok
    assert [r.verdict for r in rows] == ["ERROR", "PASS"]
    assert "payment not running" in rows[0].failures[0]
