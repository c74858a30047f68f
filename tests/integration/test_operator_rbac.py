"""The operator's ClusterRole in deploy/ is enough, and no broader than it says.

The operator runs as ServiceAccount toka-operator with a token from
TokenRequest, bound only to deploy/operator-rbac.yaml, and completes a
session with a missing-Secret agent beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import NodeAgentProcess, OperatorProcess, failed
from tests.helpers import phase_is, wait_for
from tests.sessions import agent, finish, put_recordings, recording, session
from toka.devcluster.controlplane import ControlPlane
from toka.kube.client import (
    AGENTS,
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    NAMESPACES,
    SERVICEACCOUNTS,
    SESSIONS,
    ApiError,
    AsyncKube,
    Resource,
)

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "operator-rbac.yaml"
RESOURCES: dict[str, Resource] = {
    "Namespace": NAMESPACES,
    "ServiceAccount": SERVICEACCOUNTS,
    "ClusterRole": CLUSTERROLES,
    "ClusterRoleBinding": CLUSTERROLEBINDINGS,
}


def documents() -> list[JSON]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def test_no_rule_is_a_wildcard_and_each_says_why() -> None:
    (role,) = [d for d in documents() if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
    text = MANIFEST.read_text()
    assert text.count("\n- apiGroups:") == len(role["rules"])
    # A comment right above every rule.
    blocks = text.split("\n- apiGroups:")[1:]
    previous = text.split("\n- apiGroups:")[:-1]
    for before, _ in zip(previous, blocks, strict=True):
        assert before.rstrip().splitlines()[-1].startswith("#"), before[-200:]


async def operator_kubeconfig(kube: AsyncKube, cp: ControlPlane, path: Path) -> Path:
    for doc in documents():
        res = RESOURCES[doc["kind"]]
        try:
            await kube.create(res, doc, doc["metadata"].get("namespace"))
        except ApiError as err:
            if not err.conflict:
                raise
    token = await kube.create(
        SERVICEACCOUNTS,
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
        "toka-system",
        name="toka-operator",
        sub="token",
    )
    return cp.token_kubeconfig(path, str(token["status"]["token"]))


async def test_the_operator_completes_a_session_with_only_its_cluster_role(
    kube: AsyncKube,
    namespace: str,
    controlplane: ControlPlane,
    node_agent: NodeAgentProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    config = await operator_kubeconfig(kube, controlplane, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(config, namespace, tmp_path / "operator.log")
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "first": recording("first", {"t": [finish("first done")]}),
            "second": recording("second", {"t": [finish("second done")]}),
        },
    )
    op.start()
    try:
        await kube.create(
            SESSIONS,
            session("least", [agent("first"), agent("second", depends=["first"])]),
            namespace,
        )
        nokey = {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "nokey"},
            "spec": {
                "capabilities": ["llm:complete"],
                "tasks": [{"name": "t", "description": "x"}],
                "llm": {
                    "provider": "anthropic",
                    "apiKeySecretRef": {"name": "absent", "key": "api-key"},
                },
            },
        }
        await kube.create(AGENTS, nokey, namespace)
        done = await wait_for(
            kube, SESSIONS, "least", namespace, phase_is("Succeeded", "Failed"), timeout=120
        )
        assert done["status"]["phase"] == "Succeeded", done["status"]
        second = await kube.get(AGENTS, "least-second", namespace)
        assert second["spec"]["handoff"][0]["summary"] == "t: first done"
        pending = await wait_for(
            kube,
            AGENTS,
            "nokey",
            namespace,
            lambda a: any(
                c["reason"] == "SecretNotFound"
                for c in (a.get("status") or {}).get("conditions", [])
            ),
            timeout=60,
        )
        assert "absent" in pending["status"]["message"]
    finally:
        op.stop()
        log = op.log.read_text(errors="replace")
        if failed(request):
            print(f"--- operator log\n{log[-6000:]}")
    assert "403" not in log, log[-3000:]
    assert "Forbidden" not in log, log[-3000:]
