"""What the kernel's git proxy lets through a push: the pure rule, row by row."""

from __future__ import annotations

import pytest

from toka.kernel.results import ZERO, Remote, push_refusal

OWN = "refs/heads/toka/s/agents/me"
REMOTE = Remote(
    url="https://git.example/r.git",
    base_ref="main",
    own_ref=OWN,
    authorization=None,
    work_prefix="refs/heads/toka/s/work/me/",
)
A, B = "a" * 40, "b" * 40


def pkt(line: str) -> bytes:
    data = line.encode()
    return f"{len(data) + 4:04x}".encode() + data


def push(*commands: tuple[str, str, str]) -> bytes:
    lines = [f"{old} {new} {ref}" for old, new, ref in commands]
    lines[0] += "\0report-status side-band-64k agent=git/2.39"
    return b"".join(pkt(line + "\n") for line in lines) + b"0000PACK..."


@pytest.mark.parametrize(
    ("commands", "refused"),
    [
        ([(ZERO, A, OWN)], None),
        ([(ZERO, A, "refs/heads/toka/s/work/me/task-1")], None),  # a too-large result
        ([(A, B, "refs/heads/toka/s/work/me/task-1")], "never moved"),
        ([(ZERO, A, "refs/heads/toka/s/work/other/task-1")], "not this agent's result ref"),
        ([(ZERO, A, "refs/heads/toka/s/work/me/a/b")], "not this agent's result ref"),
        ([(ZERO, A, "refs/heads/main")], "base branch"),
        ([(ZERO, A, "main")], "base branch"),
        ([(ZERO, A, "refs/heads/toka/s/agents/other")], "not this agent's result ref"),
        ([(ZERO, A, "refs/heads/toka/s/result")], "not this agent's result ref"),
        ([(ZERO, A, "refs/tags/v1")], "not this agent's result ref"),
        ([(A, B, OWN)], "never moved"),
        ([(A, ZERO, OWN)], "deleting"),
        ([(ZERO, A, OWN), (ZERO, A, "refs/heads/evil")], "not this agent's result ref"),
    ],
)
def test_a_push_may_only_create_the_agents_own_result_ref(
    commands: list[tuple[str, str, str]], refused: str | None
) -> None:
    reason = push_refusal(push(*commands), REMOTE)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason


def test_without_a_configured_push_nothing_may_be_pushed() -> None:
    remote = Remote(url=REMOTE.url, base_ref="main", own_ref=None, authorization=None)
    assert "no workspace.git.push" in (push_refusal(push((ZERO, A, OWN)), remote) or "")


def test_an_empty_or_garbled_push_is_refused() -> None:
    assert push_refusal(b"0000", REMOTE) == "no ref update in the push"
    assert push_refusal(b"zzzz", REMOTE) == "no ref update in the push"
    assert "unreadable" in (push_refusal(pkt("nonsense\n") + b"0000", REMOTE) or "")
