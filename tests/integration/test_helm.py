"""The Helm chart: lint, render, schema, and its RBAC is what the operator really needs.

helm is built from its Go module into the cache like the control plane. The
rendered manifests are applied to the dev cluster (the Deployment with a
server-side dry run: the dev node runs only agent pods), and the operator,
run as a process with a token for the chart's ServiceAccount and the chart's
leader-election flags, takes the Lease and completes a session: cluster-wide,
and watching one namespace.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.conftest import NodeAgentProcess, OperatorProcess, failed
from tests.helpers import phase_is, service_account_token, wait_for
from tests.sessions import agent, finish, put_recordings, recording, session
from toka.devcluster.binaries import KUBERNETES_VERSION, ensure_helm
from toka.devcluster.controlplane import ControlPlane
from toka.kube.client import (
    AGENTS,
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    CONFIGMAPS,
    LEASES,
    NAMESPACES,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SESSIONS,
    ApiError,
    AsyncKube,
    Resource,
)
from toka.kube.crds import KINDS

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
CHART = Path(__file__).resolve().parents[2] / "helm" / "toka"
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
SERVICES = Resource("", "v1", "services")
PDBS = Resource("policy", "v1", "poddisruptionbudgets")
APPLY: dict[str, Resource] = {
    "ServiceAccount": SERVICEACCOUNTS,
    "ClusterRole": CLUSTERROLES,
    "ClusterRoleBinding": CLUSTERROLEBINDINGS,
    "Role": ROLES,
    "RoleBinding": ROLEBINDINGS,
    "NetworkPolicy": NETWORKPOLICIES,
    "ConfigMap": CONFIGMAPS,
    "Service": SERVICES,
    "PodDisruptionBudget": PDBS,
    **KINDS,
}


def helm(
    command: str, *args: str, kube_version: str | None = KUBERNETES_VERSION
) -> subprocess.CompletedProcess[str]:
    """helm against the dev cluster's Kubernetes version (no cluster is contacted)."""
    told = ["--kube-version", kube_version] if kube_version else []
    return subprocess.run(
        [str(ensure_helm()), command, *told, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# What `helm install` finds from the cluster; `helm template` is told.
API_SERVER = "networkPolicy.apiServer.cidrs={10.96.0.1/32,172.18.0.2/32}"


def render(release: str, namespace: str, *sets: str) -> tuple[str, list[JSON]]:
    flags = [f for s in (API_SERVER, *sets) for f in ("--set", s)]
    done = helm("template", release, str(CHART), "--namespace", namespace, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout, [d for d in yaml.safe_load_all(done.stdout) if d]


def only(docs: list[JSON], kind: str) -> JSON:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def operator_container(docs: list[JSON]) -> JSON:
    return dict(only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])


def operator_env(docs: list[JSON]) -> dict[str, str]:
    """The operator's environment variables that are set to a value."""
    return {e["name"]: e["value"] for e in operator_container(docs)["env"] if "value" in e}


@pytest.mark.parametrize("sets", [[], ["watchNamespaces={team-a,team-b}"]], ids=["cluster", "ns"])
def test_the_chart_lints_and_renders(sets: list[str]) -> None:
    flags = [f for s in (API_SERVER, *sets) for f in ("--set", s)]
    linted = helm("lint", "--strict", str(CHART), *flags)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    text, docs = render("toka", "toka-system", *sets)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 1
    assert "ValidatingAdmissionPolicy" in kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "operator"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for doc in docs:
        for rule in doc.get("rules", []):
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule[key], (doc["metadata"]["name"], rule)
    # A comment above every rule, in the rendered text as in the template.
    chunks = text.split("\n- apiGroups:")
    for before in chunks[:-1]:
        assert before.rstrip().splitlines()[-1].lstrip().startswith("#"), before[-300:]
    if sets:
        roles = [d for d in docs if d["kind"] == "Role" and "leases" not in str(d["rules"])]
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
        assert "--namespace=team-a" in container["args"]
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]


def test_llm_defaults_reach_the_operator_and_no_key_is_a_value() -> None:
    _, docs = render("toka", "toka-system", "llm.provider=openai", "llm.model=gpt-4o")
    env = operator_env(docs)
    assert (env["LLM_PROVIDER"], env["LLM_MODEL"]) == ("openai", "gpt-4o")
    assert not any("KEY" in name for name in env)
    assert not {"LLM_DEBUG", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"} & env.keys()


def test_llm_debug_and_openai_ids_reach_the_operator_when_set() -> None:
    _, docs = render(
        "toka", "toka-system", "llm.debug=true", "llm.organization=org-1", "llm.project=proj_1"
    )
    env = operator_env(docs)
    assert (env["LLM_DEBUG"], env["OPENAI_ORG_ID"], env["OPENAI_PROJECT_ID"]) == (
        "true",
        "org-1",
        "proj_1",
    )


LEADER_FLAGS = [
    "--leader-elect",
    "--leader-election-namespace=$(POD_NAMESPACE)",
    "--leader-election-id=toka-operator",
    "--lease-duration=15s",
    "--renew-deadline=10s",
    "--retry-period=2s",
]
LEADER_FLAG_NAMES = {flag.split("=")[0] for flag in LEADER_FLAGS}


def test_by_default_two_replicas_elect_a_leader_on_a_lease_in_their_own_namespace() -> None:
    _, docs = render("toka", "toka-system")
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = operator_container(docs)
    assert [a for a in container["args"] if a.split("=")[0] in LEADER_FLAG_NAMES] == LEADER_FLAGS
    (namespace,) = [e for e in container["env"] if e["name"] == "POD_NAMESPACE"]
    assert namespace["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_the_lease_timings_are_the_values_given() -> None:
    _, docs = render(
        "toka",
        "toka-system",
        "leaderElection.leaseDuration=1m",
        "leaderElection.renewDeadline=40s",
        "leaderElection.retryPeriod=500ms",
    )
    args = operator_container(docs)["args"]
    assert {"--lease-duration=1m", "--renew-deadline=40s", "--retry-period=500ms"} <= set(args)


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [("10s", "10s", "2s"), ("15s", "20s", "2s"), ("15s", "2s", "2500ms"), ("1m", "30s", "1m")],
)
def test_lease_timings_out_of_order_are_refused(lease: str, renew: str, retry: str) -> None:
    sets = [
        f"leaderElection.leaseDuration={lease}",
        f"leaderElection.renewDeadline={renew}",
        f"leaderElection.retryPeriod={retry}",
    ]
    done = helm(
        "template", "toka", str(CHART), *(f for s in (API_SERVER, *sets) for f in ("--set", s))
    )
    assert done.returncode != 0
    assert "leaderElection needs leaseDuration > renewDeadline > retryPeriod" in done.stderr


def test_the_replicas_spread_over_nodes_where_they_can_and_a_drain_leaves_one() -> None:
    _, docs = render("toka", "toka-system")
    pod = only(docs, "Deployment")["spec"]["template"]
    anti = pod["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti  # one dev node
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    budget = only(docs, "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_replicas_above_one_without_leader_election_are_refused() -> None:
    sets = [API_SERVER, "leaderElection.enabled=false", "replicas=2"]
    done = helm("template", "toka", str(CHART), *(f for s in sets for f in ("--set", s)))
    assert done.returncode != 0
    assert (
        "replicas is 2 but leaderElection.enabled is false: without leader election every "
        "replica would reconcile the same sessions and agents at once"
    ) in done.stderr


def test_one_replica_without_leader_election_is_recreated_and_holds_no_lease() -> None:
    _, docs = render("toka", "toka-system", "leaderElection.enabled=false", "replicas=1")
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not LEADER_FLAG_NAMES & {a.split("=")[0] for a in operator_container(docs)["args"]}
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert not [d for d in docs if "leases" in str(d.get("rules", []))]


@pytest.mark.parametrize("sets", [[], ["watchNamespaces={team-a}"]], ids=["cluster", "ns"])
def test_the_lease_role_is_in_the_release_namespace_and_grants_leases_and_events_only(
    sets: list[str],
) -> None:
    _, docs = render("r1", "r1-system", *sets)
    lease_roles = [d for d in docs if "leases" in str(d.get("rules", []))]
    assert [(r["kind"], r["metadata"]["namespace"]) for r in lease_roles] == [("Role", "r1-system")]
    (role,) = lease_roles
    assert [(r["apiGroups"], r["resources"], r["verbs"]) for r in role["rules"]] == [
        (
            ["coordination.k8s.io"],
            ["leases"],
            ["get", "list", "watch", "create", "update", "patch"],
        ),
        (["", "events.k8s.io"], ["events"], ["create"]),
    ]
    (binding,) = [
        d
        for d in docs
        if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert binding["metadata"]["namespace"] == "r1-system"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "r1-operator", "namespace": "r1-system"}
    ]


def test_the_metrics_service_selects_the_operator_pods_on_their_metrics_port() -> None:
    _, docs = render("toka", "toka-system", "metrics.operatorPort=9100")
    deployment = only(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = operator_container(docs)
    assert "--metrics-addr=0.0.0.0:9100" in container["args"]
    assert {"name": "metrics", "containerPort": 9100} in container["ports"]
    service = only(docs, "Service")
    assert service["metadata"]["namespace"] == "toka-system"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}
    ]
    # Not `helm test`'s pod, which carries the release's labels too.
    test_pod = only(docs, "Pod")
    assert not service["spec"]["selector"].items() <= test_pod["metadata"]["labels"].items()


def test_no_network_policy_stands_between_a_scraper_and_the_operators_metrics() -> None:
    _, docs = render("toka", "toka-system")
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        (needs,) = policy["spec"]["podSelector"]["matchExpressions"]
        assert (needs["key"], needs["operator"]) == ("toka.dev/agent", "Exists")
        assert needs["key"] not in pod_labels


def test_there_is_no_service_monitor_unless_asked() -> None:
    _, docs = render("toka", "toka-system")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}


def test_the_service_monitor_scrapes_the_operators_metrics_service() -> None:
    _, docs = render(
        "toka",
        "toka-system",
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.interval=15s",
        "metrics.serviceMonitor.labels.release=prometheus",
    )
    service = only(docs, "Service")
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "toka-system"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["toka-system"]}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    # The kernels are scraped pod by pod; the operator only through its Service.
    (kernels,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert kernels["metadata"]["name"] == "toka-kernels"
    assert kernels["metadata"]["labels"]["release"] == "prometheus"
    assert kernels["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"


def test_the_network_policy_never_lets_agents_reach_metadata_addresses() -> None:
    # A user's own entry without `except` still never reaches metadata addresses.
    _, docs = render(
        "toka",
        "toka-system",
        "networkPolicy.egress[0].cidr=0.0.0.0/0",
        "networkPolicy.egress[0].ports={443}",
    )
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchExpressions"][0]["key"] == "toka.dev/agent"
    blocks = [t["ipBlock"] for rule in policy["spec"]["egress"] for t in rule.get("to", [])]
    assert blocks
    assert all("169.254.0.0/16" in b.get("except", []) for b in blocks if b["cidr"] == "0.0.0.0/0")


PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8"]


def test_by_default_agents_reach_public_addresses_and_the_api_server_alone() -> None:
    _, docs = render("toka", "toka-system")
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    rules = policy["spec"]["egress"]
    api = [r for r in rules if {p["port"] for p in r["ports"]} == {443, 6443}]
    assert [[t["ipBlock"] for t in r["to"]] for r in api] == [
        [{"cidr": "10.96.0.1/32"}, {"cidr": "172.18.0.2/32"}]
    ]
    wide = [t["ipBlock"] for r in rules if r not in api for t in r.get("to", [])]
    assert {b["cidr"] for b in wide} == {"0.0.0.0/0", "::/0"}
    v4 = next(b for b in wide if b["cidr"] == "0.0.0.0/0")
    assert set(PRIVATE) | {"169.254.0.0/16"} <= set(v4["except"])
    v6 = next(b for b in wide if b["cidr"] == "::/0")
    assert {"fc00::/7", "fe80::/10", "::1/128"} <= set(v6["except"])


def test_without_a_cluster_to_ask_the_chart_asks_for_the_api_servers_addresses() -> None:
    done = helm("template", "toka", str(CHART))
    assert done.returncode != 0
    assert "networkPolicy.apiServer.cidrs" in done.stderr


def test_helm_template_renders_without_a_kube_version() -> None:
    """helm's own default version (v1.20.0 when built from source) is no cluster's."""
    done = helm("template", "toka", str(CHART), "--set", API_SERVER, kube_version=None)
    assert done.returncode == 0, done.stderr
    told = helm("template", "toka", str(CHART), "--set", API_SERVER)
    assert done.stdout == told.stdout


class OldApiServer(ThreadingHTTPServer):
    """What helm asks a cluster before it renders, answered as Kubernetes v1.29 would."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OldApiHandler)


class _OldApiHandler(BaseHTTPRequestHandler):
    RESOURCES: ClassVar[list[tuple[str, str, bool]]] = [
        ("namespaces", "Namespace", False),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("endpoints", "Endpoints", True),
    ]

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        answers: dict[str, JSON] = {
            "/version": {"major": "1", "minor": "29", "gitVersion": "v1.29.4"},
            "/api": {"kind": "APIVersions", "versions": ["v1"]},
            "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
            "/api/v1": {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {"name": n, "singularName": "", "namespaced": ns, "kind": k, "verbs": ["get"]}
                    for n, k, ns in self.RESOURCES
                ],
            },
            "/api/v1/namespaces/kube-system": {
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"name": "kube-system"},
            },
            "/api/v1/namespaces/default/services/kubernetes": {
                "kind": "Service",
                "apiVersion": "v1",
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"]},
            },
        }
        body = answers.get(path)
        if body is None and path.endswith("/secrets"):  # helm's release records: none
            body = {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}
        status = 200 if body is not None else 404
        data = json.dumps(body or {"kind": "Status", "status": "Failure", "code": 404}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def old_cluster(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig for a cluster that says it runs Kubernetes v1.29.4."""
    server = OldApiServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "old-cluster.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "old", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "old", "user": {}}],
                "contexts": [{"name": "old", "context": {"cluster": "old", "user": "old"}}],
                "current-context": "old",
            }
        )
    )
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()


def test_a_cluster_older_than_1_30_is_refused_with_a_clear_message(old_cluster: Path) -> None:
    install = [str(CHART), "-n", "toka-system", "--kubeconfig", str(old_cluster)]
    done = helm("install", "toka", *install, "--dry-run=server", kube_version=None)
    assert done.returncode != 0
    assert (
        "Toka needs Kubernetes 1.30 or later (its admission policies are "
        "ValidatingAdmissionPolicy v1); this cluster runs v1.29.4"
    ) in done.stderr
    told = helm("template", "toka", str(CHART), "--set", API_SERVER, kube_version="1.29.4")
    assert told.returncode != 0
    assert "Toka needs Kubernetes 1.30 or later" in told.stderr
    assert "--kube-version is v1.29.4" in told.stderr


def test_a_current_cluster_passes_the_version_check(kubeconfig: Path) -> None:
    # A dry run: the fixture's admission policies, made without helm, stay as they are.
    args = [str(CHART), "-n", "toka-system", "--kubeconfig", str(kubeconfig)]
    done = helm("install", "toka", *args, "--dry-run=server", "--take-ownership", kube_version=None)
    assert done.returncode == 0, done.stderr
    assert "kind: ValidatingAdmissionPolicy" in done.stdout


def test_tracing_is_off_by_default_and_its_endpoint_reaches_the_operator_when_set() -> None:
    def env_of(*sets: str) -> dict[str, str]:
        return operator_env(render("toka", "toka-system", *sets)[1])

    assert not any(name.startswith("OTEL_") for name in env_of())
    env = env_of("tracing.otlpEndpoint=http://otel-collector.observability:4318")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert "OTEL_TRACES_SAMPLER" not in env
    sampled = env_of("tracing.otlpEndpoint=http://c:4318", "tracing.samplingRatio=0")
    assert (sampled["OTEL_TRACES_SAMPLER"], sampled["OTEL_TRACES_SAMPLER_ARG"]) == (
        "parentbased_traceidratio",
        "0",
    )


def test_an_in_cluster_llm_endpoint_is_opened_by_its_own_entry() -> None:
    entry = (
        'networkPolicy.egress=[{"namespaceSelector": {"matchLabels": '
        '{"kubernetes.io/metadata.name": "llm"}}, "ports": [8000]}]'
    )
    done = helm("template", "toka", str(CHART), "--set", API_SERVER, "--set-json", entry)
    assert done.returncode == 0, done.stderr
    (policy,) = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "NetworkPolicy"]
    last = policy["spec"]["egress"][-1]
    assert last["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "llm"}}}
    ]
    assert last["ports"] == [{"protocol": "TCP", "port": 8000}]


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("watchNamespaces=not-a-list", "watchNamespaces"),
        ("logLevel=loud", "logLevel"),
        ("metrics.port=seventy", "port"),
        ("networkPolicy.egress[0].cidr=example.com", "cidr"),
        ("networkPolicy.egress[0].cidr=169.254.0.0/16", "cidr"),  # metadata, never
        ("llm.provider=bard", "provider"),
        ("tracing.otlpEndpoint=http://user:pw@collector:4318", "otlpEndpoint"),  # no credentials
        ("tracing.otlpEndpoint=https://sk-token@collector", "otlpEndpoint"),
        ("tracing.otlpEndpoint=https://collector/v1?api_key=sk-1", "otlpEndpoint"),
        ("tracing.samplingRatio=2", "samplingRatio"),
        ("replicas=0", "replicas"),
        ("leaderElection.leaseDuration=15", "leaseDuration"),  # a number: no unit
        ("leaderElection.renewDeadline=10 seconds", "renewDeadline"),
        ("leaderElection.retryPeriod=1d", "retryPeriod"),
        ("metrics.serviceMonitor.labels=prometheus", "labels"),
    ],
)
def test_the_values_schema_rejects_a_wrong_value(value: str, field: str) -> None:
    done = helm("template", "toka", str(CHART), "--set", value)
    assert done.returncode != 0
    assert field in done.stderr


async def apply_rendered(kube: AsyncKube, docs: list[JSON]) -> None:
    for doc in docs:
        kind = doc["kind"]
        ns = doc["metadata"].get("namespace")
        if kind == "Deployment":
            await kube.create(DEPLOYMENTS, doc, ns, dry_run=True)  # valid, not run here
            continue
        if kind in ("CustomResourceDefinition", "Pod"):
            continue  # CRDs installed by the fixture; the Pod is `helm test`'s
        res = APPLY[kind]
        name = doc["metadata"]["name"]
        await kube.patch(res, name, doc, ns, patch_type="apply", field_manager="helm", force=True)


async def chart_operator_kubeconfig(
    kube: AsyncKube, cp: ControlPlane, release: str, release_ns: str, path: Path
) -> Path:
    token = await service_account_token(kube, release_ns, f"{release}-operator")
    return cp.token_kubeconfig(path, token)


@pytest.mark.parametrize("scope", ["cluster", "namespace"])
async def test_the_operator_completes_a_session_with_only_the_charts_rbac(
    kube: AsyncKube,
    namespace: str,
    controlplane: ControlPlane,
    node_agent: NodeAgentProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    scope: str,
) -> None:
    release = f"r{uuid.uuid4().hex[:6]}"
    release_ns = f"{release}-system"
    await kube.create(NAMESPACES, {"metadata": {"name": release_ns}})
    sets = [f"watchNamespaces={{{namespace}}}"] if scope == "namespace" else []
    _, docs = render(release, release_ns, *sets)
    await apply_rendered(kube, docs)
    config = await chart_operator_kubeconfig(
        kube, controlplane, release, release_ns, tmp_path / "operator.kubeconfig"
    )
    # The Deployment's own leader-election flags, $(POD_NAMESPACE) as the kubelet expands it.
    leader_flags = [
        arg.replace("$(POD_NAMESPACE)", release_ns)
        for arg in operator_container(docs)["args"]
        if arg.split("=")[0] in LEADER_FLAG_NAMES
    ]
    op = OperatorProcess(config, namespace, tmp_path / "operator.log", leader_flags)
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
        lease = await kube.get(LEASES, f"{release}-operator", release_ns)
        assert lease["spec"]["holderIdentity"], lease
        assert lease["spec"]["leaseDurationSeconds"] == 15
    finally:
        op.stop()
        log = op.log.read_text(errors="replace")
        if failed(request):
            print(f"--- operator log\n{log[-6000:]}")
        for doc in docs:
            if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                with contextlib.suppress(ApiError):
                    await kube.delete(APPLY[doc["kind"]], doc["metadata"]["name"])
        await kube.delete(NAMESPACES, release_ns)
    assert not re.search(r"\b403\b", log), log[-3000:]  # a status, not a namespace's hex
    assert "Forbidden" not in log, log[-3000:]
