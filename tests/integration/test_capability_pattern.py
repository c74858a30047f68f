"""The capability table against the pattern the API server enforces (RE2, generated)."""

from __future__ import annotations

import pytest

from tests.capability_table import INVALID, MCP_SERVERS, VALID
from toka.kube.client import AGENTS, ApiError, AsyncKube

pytestmark = pytest.mark.controlplane


def agent(caps: list[str]) -> dict[str, object]:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "cap"},
        "spec": {
            "capabilities": caps,
            "mcpServers": [{"name": n, "url": f"http://{n}.example:8080/mcp"} for n in MCP_SERVERS],
            "tasks": [{"name": "t", "description": "x"}],
        },
    }


async def test_the_server_accepts_every_valid_capability(kube: AsyncKube, namespace: str) -> None:
    await kube.create(AGENTS, agent(VALID), namespace, dry_run=True)


@pytest.mark.parametrize("text", INVALID)
async def test_the_server_rejects_every_invalid_capability(
    kube: AsyncKube, namespace: str, text: str
) -> None:
    with pytest.raises(ApiError) as err:
        await kube.create(AGENTS, agent([text]), namespace, dry_run=True)
    assert "spec.capabilities[0]" in err.value.message
