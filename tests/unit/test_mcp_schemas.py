"""Schemas Toka did not write (an MCP server's, an agent's), tool names and LLM names: pure
checks, table-driven."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from toka.api.capabilities import MAX_TOOL_NAME, is_tool_name
from toka.api.models import McpServerStatus
from toka.kernel.mcp import llm_name
from toka.llm.validate import MAX_SCHEMA_DEPTH, schema_errors, schema_problems

JSON = dict[str, Any]


def deep(depth: int) -> JSON:
    schema: JSON = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# schema -> the problem reported (a substring), or None for a schema that can be applied
PROBLEMS: list[tuple[Any, str | None]] = [
    ({"type": "object"}, None),
    ({"type": ["string", "null"], "maxLength": 3, "pattern": "^(a+)+$"}, None),
    ({"type": "object", "properties": {"a": {"enum": [1, "x"]}}, "required": ["a"]}, None),
    ({"type": "array", "items": {"type": "integer", "minimum": 0.5}}, None),
    ({"additionalProperties": {"type": "string"}}, None),
    ({"anyOf": "not ours to check"}, None),  # an unknown keyword is ignored
    (deep(MAX_SCHEMA_DEPTH), None),
    ("object", "$: a schema must be an object"),
    ({"type": {}}, "$.type: not a JSON type"),
    ({"type": ["string", {}]}, "$.type: not a JSON type"),
    ({"type": "strin"}, "$.type: not a JSON type"),
    ({"properties": {"a": "x"}}, "$.properties.a: a schema must be an object"),
    ({"properties": ["a"]}, "$.properties: not an object"),
    ({"maxLength": "3"}, "$.maxLength: not a non-negative integer"),
    ({"minItems": True}, "$.minItems: not a non-negative integer"),
    ({"maxItems": -1}, "$.maxItems: not a non-negative integer"),
    ({"minimum": "0"}, "$.minimum: not a number"),
    ({"pattern": 3}, "$.pattern: not a string"),
    ({"enum": "abc"}, "$.enum: not a list"),
    ({"required": "a"}, "$.required: not a list of names"),
    ({"required": [{}]}, "$.required: not a list of names"),
    ({"additionalProperties": "no"}, "$.additionalProperties: not a boolean or a schema"),
    ({"items": {"type": 3}}, "$.items[0].type: not a JSON type"),
    (deep(MAX_SCHEMA_DEPTH + 1), f"nested deeper than {MAX_SCHEMA_DEPTH}"),
]


@pytest.mark.parametrize(("schema", "problem"), PROBLEMS)
def test_a_schema_the_kernel_cannot_apply_is_named(schema: Any, problem: str | None) -> None:
    found = schema_problems(schema)
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


# Malformed schemas (an agent's tool specs reach `schema_errors` unchecked): never an
# exception, a wrong keyword ignored.
@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": {}}, "x"),
        ({"type": ["string", {}]}, "x"),
        ({"pattern": "("}, "x"),
        ({"pattern": 3}, "x"),
        ({"maxLength": "3"}, "xxxx"),
        ({"minimum": "0"}, 1),
        ({"enum": 3}, 1),
        ({"required": [{}]}, {}),
        ({"properties": {"a": "x"}}, {"a": 1}),
        ({"properties": ["a"]}, {"a": 1}),
        ({"items": 3}, [1]),
    ],
)
def test_a_malformed_schema_never_raises(schema: JSON, value: Any) -> None:
    assert schema_errors(value, schema) == []


def test_values_nested_deeper_than_the_bound_are_refused_not_recursed_into() -> None:
    value: Any = "x"
    for _ in range(MAX_SCHEMA_DEPTH + 5):
        value = {"a": value}
    errors = schema_errors(value, deep(MAX_SCHEMA_DEPTH + 5))
    assert errors == [f"$.{'.'.join(['a'] * (MAX_SCHEMA_DEPTH + 1))}: nested deeper than 32"]


@pytest.mark.parametrize(
    ("patterns", "errors"), [(False, []), (True, ["$.name: does not match ^[a-z]+$"])]
)
def test_a_pattern_is_applied_only_when_the_caller_vouches_for_the_schema(
    patterns: bool, errors: list[str]
) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}}}
    assert schema_errors({"name": "A!"}, schema, patterns=patterns) == errors


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("search", True),
        ("search.delete", True),
        ("a-b_c.D9", True),
        ("x" * MAX_TOOL_NAME, True),
        ("x" * (MAX_TOOL_NAME + 1), False),
        ("", False),
        ("bad name", False),
        ("a\n", False),
        ("a/b", False),
        ("é", False),
    ],
)
def test_one_definition_of_an_mcp_tool_name_for_the_grammar_and_the_status(
    name: str, valid: bool
) -> None:
    assert is_tool_name(name) is valid
    try:
        McpServerStatus(name="s", ready=True, tools=[name])
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is valid


@pytest.mark.parametrize(
    ("server", "tool", "expected"),
    [
        ("docs", "search", "mcp__docs__search"),
        ("docs", "search.delete", "mcp__docs__search_delete"),
        ("docs", "a-b", "mcp__docs__a-b"),
    ],
)
def test_llm_names(server: str, tool: str, expected: str) -> None:
    assert llm_name(server, tool) == expected


def test_long_llm_names_of_two_servers_sharing_a_prefix_differ() -> None:
    one, two = "s" * 62 + "1", "s" * 62 + "2"
    names = {llm_name(one, "get"), llm_name(two, "get"), llm_name(one, "put")}
    assert len(names) == 3
    assert all(len(n) <= 64 for n in names)
