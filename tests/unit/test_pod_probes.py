"""The agent pod's probes are ones a real kubelet can make succeed.

A kubelet sends `httpGet` and `tcpSocket` probes to the pod IP; the kernel's API
listens on loopback only, so its probe must run inside its container.
"""

from __future__ import annotations

from typing import Any

import pytest

from toka.api.models import Agent
from toka.cli import build_parser
from toka.contract import ENTRYPOINT
from toka.controller.builders.pod import PodConfig, build_agent_pod
from toka.kernel.probe import TIMEOUT_SECONDS

JSON = dict[str, Any]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def an_agent(**spec: Any) -> Agent:
    return Agent.model_validate(
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u"},
            "spec": {"tasks": [{"name": "t", "description": "x"}], **spec},
        }
    )


def containers(pod: JSON) -> list[JSON]:
    return pod["spec"]["initContainers"] + pod["spec"]["containers"]  # type: ignore[no-any-return]


def loopback_ports(pod: JSON) -> set[int]:
    """The ports the pod's containers are told to reach on loopback: listeners that a
    probe sent to the pod IP never reaches."""
    ports = set()
    for c in containers(pod):
        for env in c.get("env", []):
            host, _, port = str(env.get("value", "")).rpartition(":")
            if host in ("127.0.0.1", "localhost", "[::1]") and port.isdigit():
                ports.add(int(port))
    return ports


@pytest.mark.parametrize(
    "agent",
    [
        an_agent(),
        an_agent(workspace={"persistentVolumeClaim": {"claimName": "shared"}}),
        an_agent(mcpServers=[{"name": "docs", "url": "https://docs.example/mcp"}]),
    ],
    ids=["plain", "shared-workspace", "mcp"],
)
@pytest.mark.parametrize("kernel_port", [8181, 9999])
def test_no_container_is_probed_over_the_network_on_a_port_that_listens_on_loopback_only(
    agent: Agent, kernel_port: int
) -> None:
    pod = build_agent_pod(agent, 1, PodConfig(kernel_port=kernel_port))
    loopback = loopback_ports(pod)
    assert kernel_port in loopback
    for c in containers(pod):
        for kind in PROBES:
            probe = c.get(kind) or {}
            for network in ("httpGet", "tcpSocket"):
                if network in probe:
                    assert probe[network]["port"] not in loopback, (c["name"], kind, probe)


def test_the_kernel_is_probed_by_running_toka_kernel_probe_in_its_container() -> None:
    pod = build_agent_pod(an_agent(), 1, PodConfig())
    kernel = next(c for c in containers(pod) if c["name"] == "kernel")
    probe = kernel["startupProbe"]
    assert set(probe) & {"httpGet", "tcpSocket", "grpc"} == set()
    command = probe["exec"]["command"]
    assert command == [*ENTRYPOINT, "kernel", "--probe"]
    args = build_parser().parse_args(command[len(ENTRYPOINT) :])
    assert (args.command, args.probe) == ("kernel", True)
    # The kubelet's timeout (1 s unless said) must not cut the probe's own short.
    assert probe["timeoutSeconds"] > TIMEOUT_SECONDS
    # The probe finds the kernel where the kernel listens: its container's TOKA_KERNEL_ADDR.
    env = {e["name"]: e.get("value") for e in kernel["env"]}
    assert env["TOKA_KERNEL_ADDR"] == "127.0.0.1:8181"
