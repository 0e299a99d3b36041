"""Priority: the pure admission decision and the header's parsing."""

from __future__ import annotations

import pytest

from voicefleet_api.priority import PRIORITIES, rank
from voicefleet_inference.admission import Queued, admit, insert_at
from voicefleet_inference.errors import InvalidRequest
from voicefleet_inference.server.validation import parse_priority

C, S, X = 0, 1, 2  # critical, standard, sheddable ranks


def q(*ranks: int, cost: float = 1.0) -> list[Queued]:
    return [Queued(r, cost) for r in ranks]


def test_ranks_follow_importance_and_unknown_names_are_refused() -> None:
    assert [rank(p) for p in PRIORITIES] == [0, 1, 2]
    with pytest.raises(ValueError, match="critical, standard, sheddable"):
        rank("urgent")


def test_a_request_joins_after_its_own_class_and_before_lower_ones() -> None:
    queue = q(C, C, S, X, X)
    assert insert_at(queue, C) == 2
    assert insert_at(queue, S) == 3
    assert insert_at(queue, X) == 5
    assert insert_at([], X) == 0


def test_wait_counts_running_work_and_only_the_work_ahead() -> None:
    verdict = admit(q(C, S, X, X), C, running_work_s=2.0, workers=2, max_queue=10, wait_target_s=0)
    assert verdict.accept
    assert verdict.position == 1
    assert verdict.wait_s == pytest.approx((2.0 + 1.0) / 2)


def test_past_the_target_sheddable_is_refused_first_then_standard_never_critical() -> None:
    queue = q(S, S, S)  # 3 s ahead of anyone, 1 worker
    shed = admit(queue, X, 0.0, 1, 10, wait_target_s=2.0)
    std = admit(queue, S, 0.0, 1, 10, wait_target_s=2.0)
    crit = admit(queue, C, 0.0, 1, 10, wait_target_s=2.0)
    assert not shed.accept
    assert "target 2" in shed.reason
    assert std.accept  # 3 s < twice the target
    assert crit.accept
    longer = q(S, S, S, S, S)
    assert not admit(longer, S, 0.0, 1, 10, wait_target_s=2.0).accept
    assert admit(longer, C, 0.0, 1, 10, wait_target_s=2.0).accept


def test_no_target_means_only_a_full_queue_refuses() -> None:
    assert admit(q(S, S), X, 100.0, 1, 3, wait_target_s=0).accept


def test_a_full_queue_pushes_out_the_newest_lower_class_request() -> None:
    queue = q(C, S, X, X)
    crit = admit(queue, C, 0.0, 1, max_queue=4, wait_target_s=0)
    assert crit.accept
    assert crit.evict == 3
    assert crit.position == 1
    std = admit(queue, S, 0.0, 1, max_queue=4, wait_target_s=0)
    assert std.accept
    assert std.evict == 3
    shed = admit(queue, X, 0.0, 1, max_queue=4, wait_target_s=0)
    assert not shed.accept
    assert "queue is full" in shed.reason


def test_critical_is_refused_only_by_a_queue_full_of_equal_or_higher_work() -> None:
    verdict = admit(q(C, C), C, 0.0, 1, max_queue=2, wait_target_s=0.1)
    assert not verdict.accept
    assert verdict.evict is None


def test_the_header_defaults_and_is_case_insensitive() -> None:
    assert parse_priority(None, "sheddable") == "sheddable"
    assert parse_priority(" Critical ", "standard") == "critical"


def test_an_unknown_priority_is_a_400_naming_the_accepted_ones() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_priority("urgent", "standard")
    assert info.value.param == "x-voicefleet-priority"
    assert "critical, standard, sheddable" in str(info.value)


def test_sheddable_is_held_only_while_the_idle_workers_are_the_reserved_ones() -> None:
    from voicefleet_inference.batching import Waiting, holds_sheddable, plan_batch

    assert holds_sheddable(1, 1)
    assert not holds_sheddable(2, 1)
    assert not holds_sheddable(1, 0)
    queue = [Waiting(0.0, 99.0, held=True), Waiting(1.0, 99.0)]
    assert plan_batch(queue, 2.0, 1, 0.0).take == (1,)
    assert plan_batch([Waiting(0.0, 1.0, held=True)], 2.0, 1, 0.0).expired == (0,)
