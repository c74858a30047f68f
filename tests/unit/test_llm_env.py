"""The operator's LLM settings reach every kernel, and only the kernel; keys never do."""

from __future__ import annotations

import pytest

from toka.api.models import Agent
from toka.controller.builders.pod import PodConfig, build_agent_pod
from toka.controller.main import compute_llm_defaults

AGENT = Agent.model_validate(
    {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "a", "namespace": "ns", "uid": "u"},
        "spec": {"tasks": [{"name": "t", "description": "x"}]},
    }
)

FORWARDED = [
    # (the operator's environment, what the kernel gets)
    ({"LLM_DEBUG": "true"}, {"LLM_DEBUG": "true"}),
    (
        {"OPENAI_ORG_ID": "org-1", "OPENAI_PROJECT_ID": "proj_1"},
        {"OPENAI_ORG_ID": "org-1", "OPENAI_PROJECT_ID": "proj_1"},
    ),
    ({"LLM_PROVIDER": "openai", "LLM_DEBUG": ""}, {"LLM_PROVIDER": "openai"}),
    ({"OPENAI_API_KEY": "sk-secret-0123456789", "ANTHROPIC_API_KEY": "sk-ant-0123456789"}, {}),
    ({"HOME": "/tmp", "KUBECONFIG": "/etc/kube"}, {}),
]


@pytest.mark.parametrize(("env", "expected"), FORWARDED)
def test_the_operators_llm_settings_reach_the_kernel_and_keys_never_do(
    env: dict[str, str], expected: dict[str, str]
) -> None:
    pod = build_agent_pod(AGENT, 1, PodConfig(llm_defaults=compute_llm_defaults(env)))
    containers = {c["name"]: c for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]}
    kernel = {e["name"]: e.get("value") for e in containers["kernel"]["env"]}
    forwarded = {k: v for k, v in kernel.items() if k.startswith(("LLM_", "OPENAI_", "ANTHROPIC_"))}
    assert forwarded == expected
    for other in ("agent", "tools"):
        names = {e["name"] for e in containers[other]["env"]}
        assert not names & {"LLM_DEBUG", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"}
