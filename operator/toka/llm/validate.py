"""Response validation: size, tool calls that exist and whose arguments fit their schema,
empty answers and refusals.

Tool schemas are ours (the kernel's tools) and use a small JSON Schema
subset: type, properties, required, additionalProperties, enum, items,
minItems/maxItems, minLength/maxLength, pattern, minimum/maximum. Checking that subset needs no
dependency; an unknown keyword is ignored rather than guessed at.
"""

from __future__ import annotations

import re
from typing import Any

from toka.llm.errors import InvalidResponse
from toka.llm.types import Completion, ToolSpec

MAX_RESPONSE_CHARS = 1_000_000
_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every way `value` breaks `schema` (the subset above), as readable strings."""
    errors: list[str] = []
    expected = schema.get("type")
    if expected is not None:
        names = expected if isinstance(expected, list) else [expected]
        ok = any(
            isinstance(value, _TYPES[n])
            and not (n in ("integer", "number") and isinstance(value, bool))
            for n in names
            if n in _TYPES
        )
        if not ok:
            return [f"{path}: expected {'/'.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{path}: does not match {schema['pattern']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}.{k}: required" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key}: not allowed")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
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
        problems = schema_errors(call.arguments, spec.parameters)
        if problems:
            raise InvalidResponse(
                provider,
                f"arguments of {call.name!r} do not match its schema: {'; '.join(problems[:5])}",
            )
    return completion
