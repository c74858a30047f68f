"""The capability grammar: parse, aliases, permits, narrowing — default deny."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.capability_table import INVALID, VALID
from toka.api.capabilities import (
    ALIASES,
    CAPABILITY_PATTERN,
    Capability,
    CapabilityError,
    Grant,
    glob_covers,
    is_valid,
    parse,
)
from toka.paths import PathError, canonical_path


@pytest.mark.parametrize("text", VALID)
def test_valid_capabilities_parse(text: str) -> None:
    assert is_valid(text)
    assert parse(text)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_capabilities_are_refused_with_the_grammar_in_the_message(text: str) -> None:
    assert not is_valid(text)
    with pytest.raises(CapabilityError) as err:
        parse(text)
    assert "capability" in str(err.value)


def test_a_refused_capability_names_the_mcp_form_too() -> None:
    with pytest.raises(CapabilityError) as err:
        parse("mcp:Docs:search")
    assert "mcp:<server>:<tool-glob>" in str(err.value)


def test_the_crd_pattern_compiles_without_lookarounds_so_go_accepts_it() -> None:
    assert "(?=" not in CAPABILITY_PATTERN
    assert "(?!" not in CAPABILITY_PATTERN
    re.compile(CAPABILITY_PATTERN)


EXPANSIONS = [
    ("filesystem-read", ["fs:read:**"]),
    ("filesystem-write", ["fs:write:**"]),
    ("analysis", ["fs:read:**"]),
    ("reporting", ["fs:write:reports/**"]),
    ("cargo-execution", ["shell:exec:cargo"]),
    ("git-access", ["shell:exec:git"]),
    ("npm-execution", ["shell:exec:npm"]),
    ("python-execution", ["shell:exec:python3"]),
    ("make-execution", ["shell:exec:make"]),
    ("go-execution", ["shell:exec:go"]),
    ("network-access", ["net:http:*"]),
    ("llm-access", ["llm:complete"]),
    ("agent-spawning", ["agent:spawn"]),
]


@pytest.mark.parametrize(("alias", "expected"), EXPANSIONS)
def test_the_seeds_aliases_expand_to_canonical_capabilities(
    alias: str, expected: list[str]
) -> None:
    assert [str(c) for c in parse(alias)] == expected


def test_every_alias_in_the_table_is_tested() -> None:
    assert {a for a, _ in EXPANSIONS} == set(ALIASES)


PERMITS = [
    # (granted, domain, action, target, allowed)
    ("fs:read:src/**", "fs", "read", "src/main.py", True),
    ("fs:read:src/**", "fs", "read", "src/a/b/c.py", True),
    ("fs:read:src/**", "fs", "read", "src2/main.py", False),
    ("fs:read:src/**", "fs", "write", "src/main.py", False),
    ("fs:read:**", "fs", "read", ".hidden/x", True),
    ("fs:read:**", "fs", "read", "a", True),
    ("fs:write:src/*.py", "fs", "write", "src/a.py", True),
    ("fs:write:src/*.py", "fs", "write", "src/x/a.py", False),
    ("fs:write:src/*.py", "fs", "write", "src/a.pyc", False),
    ("fs:read:docs/?.md", "fs", "read", "docs/a.md", True),
    ("fs:read:docs/?.md", "fs", "read", "docs/ab.md", False),
    ("fs:read:a/**/z.txt", "fs", "read", "a/z.txt", True),
    ("fs:read:a/**/z.txt", "fs", "read", "a/b/c/z.txt", True),
    # A directory listing (target "" or ending in "/") needs every name in it covered.
    ("fs:read:**", "fs", "read", "src/", True),
    ("fs:read:**", "fs", "read", "", True),
    ("fs:read:src/**", "fs", "read", "src/", True),
    ("fs:read:src/**", "fs", "read", "src/deep/", True),
    ("fs:read:src/**", "fs", "read", "", False),
    ("fs:read:src/*.md", "fs", "read", "src/", False),
    ("shell:exec:git", "shell", "exec", "git", True),
    ("shell:exec:git", "shell", "exec", "gitk", False),
    ("shell:exec:git", "shell", "exec", "/usr/bin/git", False),
    ("net:http:*.python.org", "net", "http", "docs.python.org", True),
    ("net:http:*.python.org", "net", "http", "DOCS.Python.org.", True),
    ("net:http:*.python.org", "net", "http", "python.org", False),
    ("net:http:*.python.org", "net", "http", "evilpython.org", False),
    ("net:http:api.github.com", "net", "http", "api.github.com", True),
    ("net:http:api.github.com", "net", "http", "github.com", False),
    ("net:http:*", "net", "http", "example.com", True),
    ("llm:complete", "llm", "complete", "", True),
    ("llm:complete", "agent", "spawn", "", False),
    ("agent:spawn", "agent", "spawn", "", True),
    ("filesystem-read", "fs", "read", "deep/x", True),
    ("filesystem-read", "fs", "write", "deep/x", False),
    # Only a canonical path is matched: another spelling would open a file the grant refuses.
    ("fs:write:*/*", "fs", "write", "./Makefile", False),
    ("fs:read:public/*/readme", "fs", "read", "public//readme", False),
    ("fs:read:**", "fs", "read", "src/./a.py", False),
    ("fs:read:*", "fs", "read", ".", False),
    ("fs:read:**", "fs", "read", "src/./", False),
    ("fs:read:**", "fs", "read", "src//", False),
    ("fs:read:**", "fs", "read", "/etc/passwd", False),
    ("fs:read:**", "fs", "read", "/", False),  # the workspace is listed as "", not "/"
    # An MCP tool: the action is the server, the glob is over the tool's name.
    ("mcp:docs:search_*", "mcp", "docs", "search_pages", True),
    ("mcp:docs:search_*", "mcp", "docs", "search", False),
    ("mcp:docs:search_*", "mcp", "docs", "fetch_page", False),
    ("mcp:docs:search_*", "mcp", "wiki", "search_pages", False),
    ("mcp:docs:*", "mcp", "docs", "v2.get-page_x", True),
    ("mcp:docs:get_?", "mcp", "docs", "get_a", True),
    ("mcp:docs:get_?", "mcp", "docs", "get_ab", False),
    ("mcp:docs:get_page", "mcp", "docs", "get_page", True),
    ("mcp:docs:get_page", "mcp", "docs", "GET_PAGE", False),
    # A name outside the MCP tool-name characters is never a tool a grant reaches.
    ("mcp:docs:*", "mcp", "docs", "", False),
    ("mcp:docs:*", "mcp", "docs", "../search", False),
    ("mcp:docs:*", "mcp", "docs", "search pages", False),
    ("mcp:docs:*", "mcp", "docs", "x" * 129, False),
    ("mcp:docs:search_*", "mcp", "docs", "search_*", False),
    ("mcp:docs:*", "fs", "read", "docs", False),
]


@pytest.mark.parametrize(("granted", "domain", "action", "target", "allowed"), PERMITS)
def test_a_grant_permits_exactly_what_it_names(
    granted: str, domain: str, action: str, target: str, allowed: bool
) -> None:
    assert (Grant.from_strings([granted]).permits(domain, action, target) is not None) is allowed


def test_an_empty_grant_denies_everything() -> None:
    grant = Grant.from_strings([])
    assert grant.permits("llm", "complete") is None
    assert grant.permits("fs", "read", "a") is None


COVERS = [
    # (parent, child, child is equal or narrower)
    ("fs:read:**", "fs:read:src/**", True),
    ("fs:read:src/**", "fs:read:src/a/*.py", True),
    ("fs:read:src/**", "fs:read:src/**", True),
    ("fs:read:src/**", "fs:read:**", False),
    ("fs:read:src/**", "fs:read:src", False),  # the directory's name is not below it
    ("fs:read:src/*.py", "fs:read:src/**", False),
    ("fs:read:src/*.py", "fs:read:src/a*.py", True),
    ("fs:read:src/?.py", "fs:read:src/a.py", True),
    ("fs:read:src/?.py", "fs:read:src/*.py", False),
    ("fs:write:**", "fs:read:src/x", False),
    ("fs:read:**/*.md", "fs:read:docs/a.md", True),
    ("fs:read:docs/*", "fs:read:docs/a/b", False),
    ("net:http:*", "net:http:a.com", True),
    ("net:http:*.x.com", "net:http:a.x.com", True),
    ("net:http:*.x.com", "net:http:*.a.x.com", True),
    ("net:http:*.x.com", "net:http:x.com", False),
    ("net:http:*.x.com", "net:http:*", False),
    ("net:http:a.com", "net:http:*.a.com", False),
    ("shell:exec:git", "shell:exec:git", True),
    ("shell:exec:git", "shell:exec:cargo", False),
    ("llm:complete", "llm:complete", True),
    ("agent:spawn", "agent:spawn", True),
    ("llm:complete", "agent:spawn", False),
    ("mcp:docs:*", "mcp:docs:search_*", True),
    ("mcp:docs:*", "mcp:docs:*", True),
    ("mcp:docs:search_*", "mcp:docs:search_pages", True),
    ("mcp:docs:search_*", "mcp:docs:search_p*", True),
    ("mcp:docs:search_*", "mcp:docs:*", False),
    ("mcp:docs:search_*", "mcp:docs:sear*", False),
    ("mcp:docs:get_?", "mcp:docs:get_a", True),
    ("mcp:docs:get_?", "mcp:docs:get_*", False),
    ("mcp:docs:*", "mcp:wiki:*", False),
    ("mcp:docs:*", "fs:read:**", False),
]


@pytest.mark.parametrize(("parent", "child", "covered"), COVERS)
def test_narrowing_is_textual_and_conservative(parent: str, child: str, covered: bool) -> None:
    (p,), (c,) = parse(parent), parse(child)
    assert p.covers(c) is covered


tool_glob = st.text(alphabet="ab_*?", min_size=1, max_size=5)
tool_name = st.text(alphabet="ab_.", min_size=1, max_size=6)


@given(parent=tool_glob, child=tool_glob, tool=tool_name)
def test_a_covered_tool_glob_never_reaches_a_tool_its_parent_does_not(
    parent: str, child: str, tool: str
) -> None:
    parent_cap, child_cap = Capability("mcp", "docs", parent), Capability("mcp", "docs", child)
    if parent_cap.covers(child_cap) and child_cap.permits("mcp", "docs", tool):
        assert parent_cap.permits("mcp", "docs", tool)


def test_a_grant_covers_a_child_capability_through_any_of_its_own() -> None:
    parent = Grant.from_strings(["fs:read:src/**", "shell:exec:git"])
    assert parent.covers(Capability("fs", "read", "src/a/**"))
    assert not parent.covers(Capability("fs", "write", "src/a"))


CANONICAL = [
    # (raw path, names a directory, its canonical form, or None: refused)
    ("src/a.py", False, "src/a.py"),
    ("./Makefile", False, "Makefile"),
    ("public//readme", False, "public/readme"),
    ("a/./b/.//c", False, "a/b/c"),
    (".hidden", False, ".hidden"),
    ("..notes", False, "..notes"),
    ("secrets/", False, None),  # a trailing `/` names a directory, never a file
    ("Makefile/", False, None),
    ("src/.", False, None),
    (".", False, None),
    ("", False, None),
    ("/etc/passwd", False, None),
    ("../x", False, None),
    ("a/../b", False, None),
    ("a\x00b", False, None),
    ("secrets/", True, "secrets"),
    ("src//deep/.", True, "src/deep"),
    ("src/.", True, "src"),
    ("./", True, ""),
    (".", True, ""),
    ("", True, ""),
    ("/", True, None),
    ("..", True, None),
    ("src/../..", True, None),
]


@pytest.mark.parametrize(("raw", "directory", "canonical"), CANONICAL)
def test_a_path_has_one_canonical_form_or_is_refused_with_a_reason(
    raw: str, directory: bool, canonical: str | None
) -> None:
    if canonical is None:
        with pytest.raises(PathError) as err:
            canonical_path(raw, directory=directory)
        assert str(err.value)
    else:
        assert canonical_path(raw, directory=directory) == canonical


segment = st.sampled_from(["a", "b", "ab", "*", "?", "a*", "*b", "**"])
# Path segments as an agent may spell them: `.`, empty and `..` segments included.
path_seg = st.sampled_from(["a", "b", "ab", "ba", "aab", "x", ".a", ".", "", ".."])
raw_paths = st.builds(
    lambda segs, trailing: "/".join(segs) + ("/" if trailing else ""),
    st.lists(path_seg, min_size=1, max_size=5),
    st.booleans(),
)


@given(
    parent=st.lists(segment, min_size=1, max_size=4),
    child=st.lists(segment, min_size=1, max_size=4),
    target=raw_paths,
)
def test_a_covered_glob_never_matches_a_path_its_parent_does_not(
    parent: list[str], child: list[str], target: str
) -> None:
    p, c = "/".join(parent), "/".join(child)
    if glob_covers(p, c):
        child_cap, parent_cap = Capability("fs", "read", c), Capability("fs", "read", p)
        if child_cap.permits("fs", "read", target):
            assert parent_cap.permits("fs", "read", target)


@settings(max_examples=1000)
@given(glob=st.lists(segment, min_size=1, max_size=4), target=raw_paths)
def test_a_grant_matches_a_path_only_in_its_canonical_spelling(
    glob: list[str], target: str
) -> None:
    if Capability("fs", "read", "/".join(glob)).permits("fs", "read", target):
        listing = target == "" or target.endswith("/")  # how permits marks a listing
        canonical = canonical_path(target, directory=listing)
        assert target == (canonical + "/" if target.endswith("/") else canonical)


@given(target=raw_paths, directory=st.booleans())
def test_the_canonical_form_is_its_own_canonical_form_and_has_no_dot_or_empty_segment(
    target: str, directory: bool
) -> None:
    try:
        canonical = canonical_path(target, directory=directory)
    except PathError:
        return
    assert canonical_path(canonical, directory=directory) == canonical
    assert not {"", ".", ".."} & set(canonical.split("/")) or canonical == ""
