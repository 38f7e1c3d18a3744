"""Promotions that need a second person: requested through the gate, approved or rejected by
someone else, both recorded."""

from datetime import timedelta
from pathlib import Path

import pytest

from core.errors import ErrorCode
from registry.entities import AliasAction, PromotionStatus
from registry.errors import RegistryError
from registry.gates import MetricGate
from registry.service import Registry
from tests.registry.conftest import make_model_dir


@pytest.fixture
def gated(registry: Registry, tmp_path: Path) -> Registry:
    """demo:1 (exact_match 0.6) in production, demo:2 worse (0.4), demo:3 better (0.8)."""
    registry.gate = MetricGate("exact_match")
    for seed, score in enumerate((0.6, 0.4, 0.8)):
        registry.register(
            "demo", make_model_dir(tmp_path / f"m{seed}", seed), metrics={"exact_match": score}
        )
    registry.set_alias("demo", "production", 1)
    return registry


def test_a_second_person_approves_and_both_are_recorded(gated: Registry) -> None:
    alice, bob = gated.acting_as("alice"), gated.acting_as("bob")
    request = alice.request_promotion("demo:3", "production", reason="better exact match")
    assert request.status is PromotionStatus.PENDING and request.gate["passed"] is True
    assert gated.resolve("demo@production").version == 1  # nothing moves before approval
    assert gated.pending("demo", PromotionStatus.PENDING) == [request]

    with pytest.raises(RegistryError, match="a second person must approve") as err:
        alice.approve(request.id)
    assert err.value.code is ErrorCode.PERMISSION_DENIED

    event = bob.approve(request.id, reason="checked the runs")
    assert gated.resolve("demo@production").version == 3
    assert (event.action, event.actor, event.from_version, event.to_version) == (
        AliasAction.PROMOTE,
        "bob",
        1,
        3,
    )
    assert "requested by alice: better exact match" in event.reason
    assert event.gate["passed"] is True
    decided = gated.store.get_pending(request.id)
    assert (decided.status, decided.decided_by, decided.event_id) == (
        PromotionStatus.APPROVED,
        "bob",
        event.id,
    )
    assert decided.decision_reason == "checked the runs"
    with pytest.raises(RegistryError, match="approved already by bob") as err:
        gated.acting_as("carol").approve(request.id)
    assert err.value.code is ErrorCode.CONFLICT
    assert gated.pending("demo", PromotionStatus.PENDING) == []


def test_a_failing_candidate_cannot_even_be_requested(gated: Registry) -> None:
    with pytest.raises(RegistryError, match="failed gate metric:exact_match") as err:
        gated.request_promotion("demo:2", "production", reason="try it")
    assert err.value.code is ErrorCode.GATE_FAILED
    assert gated.pending("demo") == []


def test_a_request_needs_a_reason_and_a_rejection_moves_nothing(gated: Registry) -> None:
    with pytest.raises(RegistryError, match="needs a reason"):
        gated.request_promotion("demo:3", "production", reason=" ")
    request = gated.acting_as("alice").request_promotion("demo:3", "production", reason="r")
    with pytest.raises(RegistryError, match="needs a reason"):
        gated.acting_as("bob").reject(request.id, reason="")
    rejected = gated.acting_as("bob").reject(request.id, reason="wait for the drift check")
    assert (rejected.status, rejected.decided_by, rejected.event_id) == (
        PromotionStatus.REJECTED,
        "bob",
        None,
    )
    assert gated.resolve("demo@production").version == 1
    assert len(gated.history("demo")) == 1


def test_approval_judges_the_champion_of_that_moment(gated: Registry, tmp_path: Path) -> None:
    """A better version promoted after the request makes the approval fail its gate; the
    request stays pending."""
    request = gated.acting_as("alice").request_promotion("demo:3", "production", reason="r")
    gated.register("demo", make_model_dir(tmp_path / "m3", 3), metrics={"exact_match": 0.9})
    gated.set_alias("demo", "production", 4)
    with pytest.raises(RegistryError, match="failed gate metric:exact_match") as err:
        gated.acting_as("bob").approve(request.id)
    assert err.value.code is ErrorCode.GATE_FAILED
    assert gated.resolve("demo@production").version == 4
    assert gated.store.get_pending(request.id).status is PromotionStatus.PENDING
    with pytest.raises(RegistryError, match="no promotion request 999") as err:
        gated.acting_as("bob").approve(999)
    assert err.value.code is ErrorCode.NOT_FOUND


def test_a_two_person_alias_moves_alone_only_with_a_recorded_break_glass_reason(
    gated: Registry,
) -> None:
    gated.two_person_aliases = frozenset({"production"})
    alone = [
        lambda glass: gated.set_alias("demo", "production", 3, break_glass=glass),
        lambda glass: gated.promote("demo:3", "production", reason="r", break_glass=glass),
        lambda glass: gated.promote(
            "demo:2", "production", reason="gate is wrong", force=True, break_glass=glass
        ),
        lambda glass: gated.rollback("demo", "production", break_glass=glass),
        lambda glass: gated.delete_alias("demo", "production", break_glass=glass),
    ]
    for move in alone:
        for missing in ("", "  "):
            with pytest.raises(RegistryError, match="second admin approves") as err:
                move(missing)
            assert err.value.code is ErrorCode.PERMISSION_DENIED
            assert (err.value.param, err.value.api_code) == (
                "break_glass_reason",
                "break_glass_required",
            )
    assert gated.resolve("demo@production").version == 1
    assert len(gated.history("demo")) == 1

    event = gated.promote("demo:3", "production", reason="r", break_glass="incident 42")
    assert (event.to_version, event.reason, event.break_glass_reason) == (3, "r", "incident 42")
    forced = gated.promote(
        "demo:2", "production", reason="gate is wrong", force=True, break_glass="incident 43"
    )
    assert forced.forced and forced.break_glass_reason == "incident 43"
    back = gated.rollback("demo", "production", break_glass="incident 44")
    assert (back.to_version, back.break_glass_reason) == (3, "incident 44")
    assert [e.break_glass_reason for e in gated.history("demo", "production")] == [
        None,
        "incident 42",
        "incident 43",
        "incident 44",
    ]
    # Other aliases move as before, and an approved request needs no break-glass reason.
    assert gated.set_alias("demo", "staging", 2).break_glass_reason is None
    gated.set_alias("demo", "production", 1, break_glass="reset")
    request = gated.acting_as("alice").request_promotion("demo:3", "production", reason="r")
    approved = gated.acting_as("bob").approve(request.id)
    assert (approved.to_version, approved.break_glass_reason) == (3, None)


def test_a_request_is_not_approved_with_a_key_its_requester_made_after_asking(
    gated: Registry,
) -> None:
    alice = "key key_aaaaaaaaaaaaaaaa (alice)"
    request = gated.acting_as(alice).request_promotion("demo:3", "production", reason="r")
    before, after = request.created_at - timedelta(hours=1), request.created_at + timedelta(1)
    refused = {
        "made by the requester after asking": ((alice, after),),
        "made by a key the requester made after asking": ((alice, after), ("key k2", after)),
    }
    for why, made_by in refused.items():
        with pytest.raises(RegistryError, match="who made this key after asking") as err:
            gated.acting_as("key k3 (second)", made_by=made_by).approve(request.id)
        assert err.value.code is ErrorCode.PERMISSION_DENIED, why
    assert gated.store.get_pending(request.id).status is PromotionStatus.PENDING

    # A key the requester made before asking, or another admin made after, may approve.
    for made_by in (((alice, before),), (("ops", before), ("key bob", after))):
        registry = gated.acting_as("key k4 (bob)", made_by=made_by)
        second = gated.acting_as(alice).request_promotion("demo:3", "staging", reason="r")
        assert registry.approve(second.id).to_version == 3
        gated.delete_alias("demo", "staging")
