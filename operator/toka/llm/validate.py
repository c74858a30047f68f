"""Response validation: size, tool calls that exist and whose arguments fit their schema,
empty answers and refusals.

Schemas use a small JSON Schema subset: type, properties, required,
additionalProperties, enum, items, minItems/maxItems, minLength/maxLength,
pattern, minimum/maximum. Checking that subset needs no dependency; an unknown
keyword is ignored rather than guessed at.

Not every schema is ours: an MCP server lists its tools' schemas, and an agent
sends the tool specs of its LLM calls. So checking never trusts a schema: a
keyword whose value has the wrong type is ignored (`schema_problems` says which,
for the kernel to refuse such a tool when it is listed), nesting is bounded, and
`pattern` is applied only when the caller vouches for the schema
(`patterns=True`, the kernel's own tools): a regular expression from elsewhere
could backtrack for minutes on the event loop (`^(a+)+$`), and Python's `re`
cannot be stopped. The server behind such a schema validates its own input.
"""

from __future__ import annotations

import re
from typing import Any

from toka.llm.errors import InvalidResponse
from toka.llm.types import Completion, ToolSpec

MAX_RESPONSE_CHARS = 1_000_000
MAX_SCHEMA_DEPTH = 32  # schemas nest no deeper; values are checked no deeper
_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
_BOUNDS = ("minimum", "maximum")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_names(value: Any) -> list[str] | None:
    """The names of a `type` keyword, or None if it is not one or a list of known names."""
    names = value if isinstance(value, list) else [value]
    if names and all(isinstance(n, str) and n in _TYPES for n in names):
        return names
    return None


def schema_problems(schema: Any, path: str = "$", depth: int = 0) -> list[str]:
    """Every keyword of the subset whose value has the wrong type (`properties: {a: "x"}`,
    `maxLength: "3"`, `type: {}`), and nesting over `MAX_SCHEMA_DEPTH`. Empty for a
    schema that `schema_errors` can apply whole."""
    if not isinstance(schema, dict):
        return [f"{path}: a schema must be an object"]
    if depth > MAX_SCHEMA_DEPTH:
        return [f"{path}: nested deeper than {MAX_SCHEMA_DEPTH}"]
    problems: list[str] = []
    if "type" in schema and _type_names(schema["type"]) is None:
        problems.append(f"{path}.type: not a JSON type or a list of them")
    for key in _COUNTS:
        if key in schema and not _count(schema[key]):
            problems.append(f"{path}.{key}: not a non-negative integer")
    for key in _BOUNDS:
        if key in schema and not _number(schema[key]):
            problems.append(f"{path}.{key}: not a number")
    if "pattern" in schema and not isinstance(schema["pattern"], str):
        problems.append(f"{path}.pattern: not a string")
    if "enum" in schema and not isinstance(schema["enum"], list):
        problems.append(f"{path}.enum: not a list")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
        problems.append(f"{path}.required: not a list of names")
    props = schema.get("properties", {})
    if isinstance(props, dict):
        for key, sub in props.items():
            problems += schema_problems(sub, f"{path}.properties.{key}", depth + 1)
    else:
        problems.append(f"{path}.properties: not an object")
    extra = schema.get("additionalProperties", True)
    if isinstance(extra, dict):
        problems += schema_problems(extra, f"{path}.additionalProperties", depth + 1)
    elif not isinstance(extra, bool):
        problems.append(f"{path}.additionalProperties: not a boolean or a schema")
    if "items" in schema:
        items = schema["items"]
        for i, sub in enumerate(items if isinstance(items, list) else [items]):
            problems += schema_problems(sub, f"{path}.items[{i}]", depth + 1)
    return problems


def schema_errors(
    value: Any, schema: dict[str, Any], path: str = "$", *, patterns: bool = False, depth: int = 0
) -> list[str]:
    """Every way `value` breaks `schema` (the subset above), as readable strings. A keyword
    of the wrong type is ignored; `pattern` is applied only with `patterns` (see above)."""
    if depth > MAX_SCHEMA_DEPTH:
        return [f"{path}: nested deeper than {MAX_SCHEMA_DEPTH}"]
    errors: list[str] = []
    names = _type_names(schema.get("type"))
    if names is not None:
        ok = any(
            isinstance(value, _TYPES[n])
            and not (n in ("integer", "number") and isinstance(value, bool))
            for n in names
        )
        if not ok:
            return [f"{path}: expected {'/'.join(names)}, got {type(value).__name__}"]
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        errors.append(f"{path}: {value!r} is not one of {enum}")
    if isinstance(value, str):
        if _count(schema.get("maxLength")) and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if _count(schema.get("minLength")) and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        pattern = schema.get("pattern")
        if patterns and isinstance(pattern, str) and re.search(pattern, value) is None:
            errors.append(f"{path}: does not match {pattern}")
    if _number(value):
        if _number(schema.get("minimum")) and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if _number(schema.get("maximum")) and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        required = schema.get("required")
        for key in required if isinstance(required, list) else []:
            if isinstance(key, str) and key not in value:
                errors.append(f"{path}.{key}: required")
        for key, item in value.items():
            if isinstance(props.get(key), dict):
                errors += schema_errors(
                    item, props[key], f"{path}.{key}", patterns=patterns, depth=depth + 1
                )
            elif key not in props and schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: not allowed")
    if isinstance(value, list):
        if _count(schema.get("minItems")) and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if _count(schema.get("maxItems")) and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors += schema_errors(
                    item, schema["items"], f"{path}[{i}]", patterns=patterns, depth=depth + 1
                )
    return errors


def validate_completion(completion: Completion, tools: list[ToolSpec]) -> Completion:
    """The completion if usable; InvalidResponse otherwise (the gateway may retry)."""
    provider = completion.provider or "provider"
    if len(completion.content) > MAX_RESPONSE_CHARS:
        raise InvalidResponse(provider, f"response longer than {MAX_RESPONSE_CHARS} characters")
    if completion.refusal is not None or completion.stop_reason == "refusal":
        return completion
    if not completion.content.strip() and not completion.tool_calls:
        raise InvalidResponse(provider, "empty response: no text and no tool call")
    offered = {t.name: t for t in tools}
    for call in completion.tool_calls:
        spec = offered.get(call.name)
        if spec is None:
            raise InvalidResponse(provider, f"tool call to {call.name!r}, which was not offered")
        # The specs are the agent's (the kernel's tools, or an MCP server's as it was
        # offered them): no `pattern` of theirs runs here; the kernel applies its own
        # tools' patterns when they are called.
        problems = schema_errors(call.arguments, spec.parameters)
        if problems:
            raise InvalidResponse(
                provider,
                f"arguments of {call.name!r} do not match its schema: {'; '.join(problems[:5])}",
            )
    return completion
