"""Conditions keep their transition time unless their status flips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from toka.api.conditions import find_condition, is_true, make_condition, merge_conditions, truncate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_an_unchanged_status_keeps_its_transition_time_but_takes_the_new_message() -> None:
    before = [make_condition("Ready", True, "Running", "1/3", now=T0)]
    after = merge_conditions(before, [make_condition("Ready", True, "Running", "2/3", now=T1)])
    ready = find_condition(after, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T0
    assert ready.message == "2/3"


def test_a_flipped_status_takes_the_new_transition_time() -> None:
    before = [make_condition("Ready", True, "Running", now=T0)]
    after = merge_conditions(before, [make_condition("Ready", False, "Failed", now=T1)])
    ready = find_condition(after, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T1
    assert not is_true(after, "Ready")


def test_types_not_recomputed_are_kept() -> None:
    before = [make_condition("Stalled", False, "Heartbeat", now=T0)]
    after = merge_conditions(before, [make_condition("Ready", True, "Running", now=T1)])
    assert [c.type for c in after] == ["Stalled", "Ready"]


def test_long_messages_are_cut_to_the_schema_bound() -> None:
    cond = make_condition("Failed", True, "Error", "x" * 5000, now=T0)
    assert len(cond.message) == 1024
    assert truncate("short") == "short"
