"""The operator's environment settings: a bad value is named before anything starts."""

from __future__ import annotations

import pytest

from toka.controller.settings import watch_timeout


@pytest.mark.parametrize(("env", "seconds"), [({}, 300), ({"TOKA_WATCH_TIMEOUT": "5"}, 5)])
def test_the_watch_timeout_defaults_to_five_minutes(env: dict[str, str], seconds: int) -> None:
    assert watch_timeout(env) == seconds


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5"])
def test_a_watch_timeout_that_is_not_whole_seconds_is_refused_by_name(value: str) -> None:
    with pytest.raises(ValueError, match=f"TOKA_WATCH_TIMEOUT must be whole seconds.*{value!r}"):
        watch_timeout({"TOKA_WATCH_TIMEOUT": value})
