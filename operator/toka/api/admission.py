"""The ValidatingAdmissionPolicies shipped with the CRDs.

Without them, anyone allowed to create Agents could name any Secret of the
namespace in `apiKeySecretRef` (or an MCP server's `headersSecretRef`) and have
the kernel send it to a URL of their choice. Each policy asks the API server's
authorizer whether the *requesting user* may `get` every Secret and ConfigMap
the object names.

Parameters (optional): ConfigMap `toka-admission` in `toka-system`, keys
`allowedImages` and `allowedCapabilities`, each a comma-separated list of
prefixes. Without the ConfigMap, or without a key, that check allows all.
"""

from __future__ import annotations

from typing import Any

from toka.contract import (
    AGENT_KIND,
    AGENT_PLURAL,
    API_GROUP,
    API_VERSION,
    SESSION_KIND,
    SESSION_PLURAL,
)

PARAM_NAMESPACE = "toka-system"
PARAM_NAME = "toka-admission"

_CAN_GET = (
    "authorizer.group('').resource('{res}').namespace(object.metadata.namespace)"
    ".name({var}).check('get').allowed()"
)


def _refs(prefix: str) -> dict[str, str]:
    """CEL for the Secret and ConfigMap names an `llm` at `prefix` refers to."""
    return {
        "secrets": (
            f"has({prefix}.llm) && has({prefix}.llm.apiKeySecretRef) ? "
            f"[{prefix}.llm.apiKeySecretRef.name] : []"
        ),
        "configmaps": (
            f"(has({prefix}.llm) && has({prefix}.llm.replay) ? "
            f"[{prefix}.llm.replay.configMapRef.name] : [])"
        ),
    }


def _match(plural: str) -> dict[str, Any]:
    return {
        "resourceRules": [
            {
                "apiGroups": [API_GROUP],
                "apiVersions": [API_VERSION],
                "operations": ["CREATE", "UPDATE"],
                "resources": [plural],
            }
        ]
    }


def _names(kind: str) -> tuple[str, str, str, str]:
    """CEL for (Secret names, ConfigMap names, images, capability check) the object names."""
    top = _refs("object.spec")
    workspace = (
        " + (has(object.spec.workspace) && has(object.spec.workspace.configMap) ? "
        "[object.spec.workspace.configMap] : [])"
    )
    # The git credential goes to workspace.git.url: the same rule as an LLM key.
    git_credentials = (
        " + (has(object.spec.workspace) && has(object.spec.workspace.git) && "
        "has(object.spec.workspace.git.credentialsSecretRef) ? "
        "[object.spec.workspace.git.credentialsSecretRef.name] : [])"
    )
    # An MCP server's headers go to its url: the same rule again.
    mcp_headers = (
        " + (has(object.spec.mcpServers) ? object.spec.mcpServers.filter(s, "
        "has(s.headersSecretRef)).map(s, s.headersSecretRef.name) : [])"
    )
    if kind == SESSION_KIND:
        secrets = (
            f"({top['secrets']}) + object.spec.agents.filter(a, has(a.llm) && "
            "has(a.llm.apiKeySecretRef)).map(a, a.llm.apiKeySecretRef.name)"
            + git_credentials
            + mcp_headers
            + " + object.spec.agents.filter(a, has(a.mcpServers)).map(a, a.mcpServers.filter("
            "s, has(s.headersSecretRef)).map(s, s.headersSecretRef.name)).flatten()"
        )
        configmaps = (
            f"{top['configmaps']} + object.spec.agents.filter(a, has(a.llm) && "
            "has(a.llm.replay)).map(a, a.llm.replay.configMapRef.name)" + workspace
        )
        images = (
            "object.spec.agents.filter(a, has(a.image)).map(a, a.image) + "
            "object.spec.agents.filter(a, has(a.toolsImage)).map(a, a.toolsImage)"
        )
        caps = (
            "object.spec.agents.filter(a, has(a.capabilities)).all(a, a.capabilities.all(c, "
            "variables.allowedCaps.exists(p, c.startsWith(p))))"
        )
        return secrets, configmaps, images, caps
    images = (
        "(has(object.spec.image) ? [object.spec.image] : []) + "
        "(has(object.spec.toolsImage) ? [object.spec.toolsImage] : [])"
    )
    caps = (
        "!has(object.spec.capabilities) || object.spec.capabilities.all(c, "
        "variables.allowedCaps.exists(p, c.startsWith(p)))"
    )
    secrets = f"({top['secrets']})" + git_credentials + mcp_headers
    return secrets, top["configmaps"] + workspace, images, caps


def _references_policy(kind: str, plural: str) -> dict[str, Any]:
    """Always on: what the object names, the requesting user must be able to read."""
    secrets, configmaps, _, _ = _names(kind)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"{plural}-references.{API_GROUP}"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": _match(plural),
            "variables": [
                {"name": "secrets", "expression": secrets},
                {"name": "configmaps", "expression": configmaps},
                {
                    "name": "deniedSecrets",
                    "expression": "variables.secrets.filter(s, !"
                    + _CAN_GET.format(res="secrets", var="s")
                    + ")",
                },
                {
                    "name": "deniedConfigMaps",
                    "expression": "variables.configmaps.filter(c, !"
                    + _CAN_GET.format(res="configmaps", var="c")
                    + ")",
                },
            ],
            "validations": [
                {
                    "expression": "size(variables.deniedSecrets) == 0",
                    # Message expressions may not use the authorizer: name all that is named.
                    "messageExpression": (
                        "'you may not get every Secret named in llm.apiKeySecretRef, "
                        "workspace.git.credentialsSecretRef or mcpServers[].headersSecretRef (' + "
                        "variables.secrets.join(', ') + ') in namespace ' + "
                        "object.metadata.namespace + ': the kernel would send its value to the LLM "
                        "provider, the git remote or the MCP server, so you must be able to read "
                        "it yourself'"
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": "size(variables.deniedConfigMaps) == 0",
                    "messageExpression": (
                        "'you may not get every ConfigMap named in llm.replay.configMapRef or "
                        "workspace.configMap (' + variables.configmaps.join(', ') + "
                        "') in namespace ' + object.metadata.namespace"
                    ),
                    "reason": "Forbidden",
                },
            ],
        },
    }


def _restrictions_policy(kind: str, plural: str) -> dict[str, Any]:
    """Admin-set, through the parameter ConfigMap: allowed image and capability prefixes."""
    _, _, images, caps = _names(kind)
    no_param = "params == null || !has(params.data)"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": f"{plural}-restrictions.{API_GROUP}"},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
            "matchConstraints": _match(plural),
            "variables": [
                {"name": "images", "expression": images},
                {
                    "name": "allowedImages",
                    "expression": f"{no_param} || !has(params.data.allowedImages) ? [] : "
                    "params.data.allowedImages.split(',').map(p, p.trim()).filter(p, p != '')",
                },
                {
                    "name": "allowedCaps",
                    "expression": f"{no_param} || !has(params.data.allowedCapabilities) ? [] : "
                    "params.data.allowedCapabilities.split(',')"
                    ".map(p, p.trim()).filter(p, p != '')",
                },
            ],
            "validations": [
                {
                    "expression": "size(variables.allowedImages) == 0 || variables.images.all(i, "
                    "variables.allowedImages.exists(p, i.startsWith(p)))",
                    "messageExpression": (
                        "'image ' + variables.images.filter(i, !variables.allowedImages.exists(p, "
                        "i.startsWith(p)))[0] + ' is not allowed here; allowed prefixes: ' + "
                        "variables.allowedImages.join(', ')"
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": f"size(variables.allowedCaps) == 0 || ({caps})",
                    "message": "a capability is not in this cluster's allowed list "
                    f"(ConfigMap {PARAM_NAMESPACE}/{PARAM_NAME}, key allowedCapabilities)",
                    "reason": "Forbidden",
                },
            ],
        },
    }


def _binding(policy: dict[str, Any]) -> dict[str, Any]:
    name = policy["metadata"]["name"]
    spec: dict[str, Any] = {"policyName": name, "validationActions": ["Deny"]}
    if "paramKind" in policy["spec"]:
        # No parameter ConfigMap: nothing is restricted (this binding only).
        spec["paramRef"] = {
            "name": PARAM_NAME,
            "namespace": PARAM_NAMESPACE,
            "parameterNotFoundAction": "Allow",
        }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": spec,
    }


def admission_manifests() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kind, plural in ((SESSION_KIND, SESSION_PLURAL), (AGENT_KIND, AGENT_PLURAL)):
        for policy in (_references_policy(kind, plural), _restrictions_policy(kind, plural)):
            out += [policy, _binding(policy)]
    return out
