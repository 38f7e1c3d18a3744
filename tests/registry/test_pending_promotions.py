"""Promotions that need a second person: requested through the gate, approved or rejected by
someone else, both recorded."""

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
