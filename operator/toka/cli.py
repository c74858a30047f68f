"""The `toka` command: one entry point for every process Toka runs.

    toka demo            a real session on the built-in dev cluster, with live progress
    toka status          a session's agents, tasks, progress and tokens (any cluster)
    toka export          a session's result as a patch, a directory or a git bundle
    toka record          run a session on a real provider and keep replay recordings
    toka crds            write crds/*.yaml (and the chart's copies) from the API models
    toka dev up|down     the development cluster, with the CRDs installed
    toka dev binaries    find or build the control plane (cached outside the clone)
    toka dev image       find or build Toka's image and the pause image (buildah, no Docker)
    toka operator        the operator: sessions and agents into pods
    toka kernel|tools|agent   the three containers of an agent pod
    toka node-agent      the dev node agent alone (against any kubeconfig; dev only)

Each subcommand imports its own modules, so `toka tools` in a sidecar does
not pay for Kopf and `toka crds` needs no cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toka.contract import AGENT_CONTAINER, KERNEL_CONTAINER, PROBE_FLAG, TOOLS_CONTAINER

Handler = Callable[[argparse.Namespace], int]


def _cmd_crds(args: argparse.Namespace) -> int:
    from toka.api.manifests import generated_files

    root = Path(args.root)
    stale: list[str] = []
    for name, text in generated_files().items():
        path = root / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(str(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(
            "stale generated files (regenerate with `toka crds`): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    for written in stale:
        print(f"wrote {written}")
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from toka.devcluster import devctl

    if args.dev_command == "up":
        return devctl.up(Path(args.state_dir), node=_node(args))
    if args.dev_command == "down":
        return devctl.down(Path(args.state_dir))
    if args.dev_command == "serve":
        return devctl.serve(Path(args.state_dir), node=_node(args))
    if args.dev_command == "env":
        return devctl.env(Path(args.state_dir))
    if args.dev_command == "binaries":
        from toka.devcluster.binaries import ensure_binaries, ensure_helm, ensure_jaeger

        found = ensure_binaries()
        for path in (
            found.kube_apiserver,
            found.etcd,
            found.kube_controller_manager,
            found.kubectl,
            ensure_helm(),
            *([ensure_jaeger()] if args.with_jaeger else []),
            *(_node_binaries() if args.node else []),
        ):
            print(path)
        return 0
    if args.dev_command == "image":
        import time

        from toka.devcluster.image import ImageError, default_repo_root, ensure_images

        started = time.monotonic()
        try:
            images = ensure_images(
                Path(args.root) if args.root else default_repo_root(), export=args.export
            )
        except ImageError as err:
            print(f"toka dev image: {err}", file=sys.stderr)
            return 1
        for ref, archive in (
            (images.toka, images.toka_archive),
            (images.pause, images.pause_archive),
        ):
            print(ref if archive is None else f"{ref}\t{archive}")
        made = [*images.built, *map(str, images.exported)]
        steps = ", ".join(f"{step} {seconds:.1f}s" for step, seconds in images.timings.items())
        print(
            f"{'made ' + ', '.join(made) if made else 'all cached'}; {steps}; "
            f"total {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
        return 0
    raise AssertionError(args.dev_command)


def _cmd_node_agent(args: argparse.Namespace) -> int:
    from toka.devcluster import nodeagent

    return nodeagent.main(Path(args.root), args.kubeconfig, args.context)


def _cmd_operator(args: argparse.Namespace) -> int:
    from toka.controller.leader import LeaderElection
    from toka.controller.main import LeadershipLost, run
    from toka.controller.settings import watch_timeout
    from toka.kube.kubeconfig import ConfigError, from_env

    try:
        kube = from_env(args.context, args.kubeconfig)
    except ConfigError as err:
        print(f"toka operator: {err}", file=sys.stderr)
        return 2
    try:
        watch_timeout(os.environ)
    except ValueError as err:
        print(f"toka operator: {err}", file=sys.stderr)
        return 2
    if args.leader_elect and not args.leader_election_namespace:
        print(
            "toka operator: --leader-elect needs --leader-election-namespace (or $POD_NAMESPACE)",
            file=sys.stderr,
        )
        return 2
    try:
        election = (
            LeaderElection(
                namespace=args.leader_election_namespace,
                name=args.leader_election_id,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
            if args.leader_elect
            else None
        )
    except ValueError as err:
        print(f"toka operator: {err}", file=sys.stderr)
        return 2
    try:
        run(
            namespaces=args.namespace,
            liveness=None if args.no_liveness else args.liveness,
            image=args.image,
            verbose=args.verbose,
            kube=kube,
            metrics=args.metrics_addr,
            leader_election=election,
        )
    except LeadershipLost as err:
        print(f"toka operator: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from toka.console.demo import run

    return run(
        Path(args.state_dir),
        keep=args.keep,
        provider=args.provider,
        namespace=args.namespace,
        timeout=args.timeout,
    )


def _cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    from toka.console.status import show
    from toka.kube.kubeconfig import ConfigError, from_env

    try:
        config = from_env(args.context, args.kubeconfig)
    except ConfigError as err:
        print(f"toka status: {err}", file=sys.stderr)
        return 2
    return asyncio.run(show(config, args.namespace, args.session, watch=args.watch))


def _cmd_export(args: argparse.Namespace) -> int:
    import asyncio

    from toka.console.export import ExportError, export
    from toka.kube.kubeconfig import ConfigError, from_env

    try:
        config = from_env(args.context, args.kubeconfig)
        said = asyncio.run(
            export(
                config,
                args.namespace,
                args.session,
                patch=args.patch,
                directory=args.dir,
                bundle=args.bundle,
            )
        )
    except (ConfigError, ExportError) as err:
        print(f"toka export: {err}", file=sys.stderr)
        return 1
    print(said, file=sys.stderr)
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    import asyncio

    from toka.console.record import RecordError, record
    from toka.kube.kubeconfig import ConfigError, from_env

    try:
        config = from_env(args.context, args.kubeconfig)
        succeeded, said = asyncio.run(
            record(
                config,
                args.namespace,
                Path(args.filename),
                Path(args.out),
                name=args.name,
                configmap=args.configmap,
                timeout=args.timeout,
            )
        )
    except (ConfigError, RecordError) as err:
        print(f"toka record: {err}", file=sys.stderr)
        return 2
    print(said, file=sys.stderr)
    return 0 if succeeded else 1


def _default_state_dir() -> str:
    import os

    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "toka", "dev")


def _cmd_kernel(args: argparse.Namespace) -> int:
    if args.probe:
        # The startup probe, every second while the kernel starts: none of the kernel's imports.
        from toka.kernel.probe import probe

        return probe()
    from toka.kernel.main import main as kernel_main

    return kernel_main()


def _cmd_agent(args: argparse.Namespace) -> int:
    from toka.agent.executor import main as agent_main

    return agent_main()


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """--kubeconfig and --context, as kubectl has them, for commands that talk to a cluster."""
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="kubeconfig file(s), ':'-separated (default: $KUBECONFIG, in-cluster, ~/.kube/config)",
    )
    parser.add_argument(
        "--context", default=None, help="the kubeconfig context (default: its current context)"
    )


def _host_port(value: str) -> str:
    _, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:8081)")
    return value


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(value: str) -> float:
    """A Go-style duration as controller-runtime's flags take it: 15s, 500ms, 1m (or seconds)."""
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        number = value.removesuffix(unit)
        if number != value:
            break
    else:
        number, unit = value, "s"
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (e.g. 15s, 500ms, 1m)")
    return seconds


if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]  # add_subparsers()'s


def _add_crds_command(sub: Subparsers) -> None:
    """`toka crds`: the CRDs from the API models."""
    crds = sub.add_parser(
        "crds", help="write crds/*.yaml and the Helm chart's copies from the API models"
    )
    crds.add_argument("--root", default=".", help="the repository root (default: .)")
    crds.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    crds.set_defaults(handler=_cmd_crds)


def _add_dev_command(sub: Subparsers) -> None:
    """`toka dev …`: the local development cluster."""
    dev = sub.add_parser("dev", help="the local development cluster")
    dev.add_argument(
        "--state-dir",
        default=_default_state_dir(),
        help="where the cluster keeps its data (default: %(default)s)",
    )
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    for name, text in [
        (
            "up",
            "start etcd, kube-apiserver, kube-controller-manager and the node agent; install CRDs",
        ),
        ("down", "stop the dev cluster and remove its state"),
        ("serve", "run the dev cluster in the foreground (what `up` starts in the background)"),
        ("env", "print shell exports for KUBECONFIG and PATH (kubectl)"),
        (
            "binaries",
            "find or build kube-apiserver, etcd, kube-controller-manager, kubectl, helm",
        ),
        ("image", "find or build Toka's image and the pause image with buildah (no Docker)"),
    ]:
        p = dev_sub.add_parser(name, help=text)
        if name in ("up", "serve"):
            p.add_argument(
                "--node",
                choices=("real", "agent", "none"),
                default="real",
                help="real: kubelet + containerd, the image built from the Dockerfile (default); "
                "agent: the stand-in node agent (a fast path for inner-loop tests); "
                "none: no pods run",
            )
            p.add_argument("--no-node-agent", action="store_true", help="the same as --node none")
        if name == "binaries":
            p.add_argument(
                "--node",
                action="store_true",
                help="also the real node's: kubelet, kube-proxy, kube-scheduler, crictl, "
                "kube-router",
            )
            # Only the tracing tests need Jaeger, and its first build takes minutes: not the demo.
            p.add_argument(
                "--with-jaeger", action="store_true", help="also Jaeger v2, for the tracing tests"
            )
        if name == "image":
            p.add_argument(
                "--root", default=None, help="the repository root (default: this checkout)"
            )
            p.add_argument(
                "--export",
                action="store_true",
                help="also write oci-archives for `ctr images import` (cached by tag)",
            )
    dev.set_defaults(handler=_cmd_dev)


def _add_demo_command(sub: Subparsers) -> None:
    """`toka demo`: the main job, on the dev cluster."""
    demo = sub.add_parser(
        "demo", help="run build-stabilization on the dev cluster and show it (make demo)"
    )
    demo.add_argument("--keep", action="store_true", help="leave the cluster and operator up")
    demo.add_argument(
        "--provider",
        choices=["anthropic", "openai", "openai-compatible"],
        default=None,
        help="a real LLM instead of the replay recordings (key from the environment)",
    )
    demo.add_argument("--namespace", "-n", default="toka-demo")
    demo.add_argument("--timeout", type=float, default=900, help="seconds (default: 900)")
    demo.add_argument("--state-dir", default=_default_state_dir(), help="dev cluster state")
    demo.set_defaults(handler=_cmd_demo)


def _add_status_command(sub: Subparsers) -> None:
    """`toka status`: a session's agents and progress."""
    status = sub.add_parser("status", help="show a session's agents and progress")
    status.add_argument("session", nargs="?", default=None, help="default: every session")
    status.add_argument("--namespace", "-n", default="default")
    status.add_argument("--watch", "-w", action="store_true", help="follow until it ends")
    add_cluster_arguments(status)
    status.set_defaults(handler=_cmd_status)


def _add_export_command(sub: Subparsers) -> None:
    """`toka export`: a session's result, out of the cluster."""
    export = sub.add_parser(
        "export", help="get a session's result from the cluster (no git remote needed)"
    )
    export.add_argument("session", help="the AgentSession")
    export.add_argument("--namespace", "-n", default="default")
    add_cluster_arguments(export)
    form = export.add_mutually_exclusive_group(required=True)
    form.add_argument("--patch", metavar="FILE", help="the changes, for git apply (- for stdout)")
    form.add_argument("--dir", metavar="DIR", help="the result's files, into an empty directory")
    form.add_argument("--bundle", metavar="FILE", help="a git bundle with history (git clone it)")
    export.set_defaults(handler=_cmd_export)


def _add_record_command(sub: Subparsers) -> None:
    """`toka record`: a session on a real provider, saved for replay."""
    rec = sub.add_parser(
        "record",
        help="run a session on a real provider; save each agent's turns for provider replay",
    )
    rec.add_argument("-f", "--filename", required=True, help="a YAML file with one AgentSession")
    rec.add_argument(
        "--out", required=True, help="directory for <agent>.json and the ConfigMap manifest"
    )
    rec.add_argument("--namespace", "-n", default="default")
    rec.add_argument("--name", default=None, help="the session's name (default: the file's)")
    rec.add_argument(
        "--configmap", default=None, help="the recordings' ConfigMap (default: SESSION-recordings)"
    )
    rec.add_argument("--timeout", type=float, default=900, help="seconds (default: 900)")
    add_cluster_arguments(rec)
    rec.set_defaults(handler=_cmd_record)


def _add_operator_command(sub: Subparsers) -> None:
    """`toka operator`: the operator, with leader election among its replicas."""
    op = sub.add_parser("operator", help="run the operator (one leader among its replicas)")
    op.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    op.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness probe endpoint (default: %(default)s)",
    )
    op.add_argument("--no-liveness", action="store_true", help="serve no liveness endpoint")
    op.add_argument(
        "--metrics-addr",
        default=None,
        metavar="HOST:PORT",
        type=_host_port,
        help="serve Prometheus /metrics here, e.g. 0.0.0.0:8081 (default: none)",
    )
    op.add_argument("--image", default=None, help="Toka image for agent pods")
    op.add_argument("--verbose", "-v", action="store_true")
    election = op.add_argument_group(
        "leader election", "run several replicas: only the holder of a Lease reconciles"
    )
    election.add_argument(
        "--leader-elect", action="store_true", help="elect a leader before reconciling"
    )
    election.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("POD_NAMESPACE"),
        help="the Lease's namespace (default: $POD_NAMESPACE)",
    )
    election.add_argument(
        "--leader-election-id", default="toka-operator", help="the Lease's name (%(default)s)"
    )
    for flag, default, what in (
        ("--lease-duration", "15s", "how long a standby waits after the last renewal"),
        ("--renew-deadline", "10s", "how long a leader retries renewing before it stops"),
        ("--retry-period", "2s", "how often candidates and the leader try"),
    ):
        election.add_argument(
            flag, default=default, type=_duration, help=f"{what} (default: {default})"
        )
    add_cluster_arguments(op)
    op.set_defaults(handler=_cmd_operator)


def _add_pod_containers_command(sub: Subparsers) -> None:
    """The agent pod's containers: the operator passes these names as args (toka.contract)."""
    kernel = sub.add_parser(
        KERNEL_CONTAINER, help="the kernel sidecar (in an agent pod); --probe checks it"
    )
    kernel.add_argument(PROBE_FLAG, action="store_true")
    kernel.set_defaults(handler=_cmd_kernel)
    agent = sub.add_parser(AGENT_CONTAINER, help="the agent runtime (in an agent pod)")
    agent.set_defaults(handler=_cmd_agent)
    tools = sub.add_parser(
        TOOLS_CONTAINER, help="the tools sidecar (in an agent pod); --probe checks it"
    )
    tools.add_argument(PROBE_FLAG, action="store_true")


def _add_node_agent_command(sub: Subparsers) -> None:
    """`toka node-agent`: the stand-in dev node."""
    node = sub.add_parser("node-agent", help="run the dev node agent (dev and tests only)")
    node.add_argument("--root", required=True, help="directory for pod volumes and logs")
    add_cluster_arguments(node)
    node.set_defaults(handler=_cmd_node_agent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toka", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_crds_command(sub)
    _add_dev_command(sub)
    _add_demo_command(sub)
    _add_status_command(sub)
    _add_export_command(sub)
    _add_record_command(sub)
    _add_operator_command(sub)
    _add_pod_containers_command(sub)
    _add_node_agent_command(sub)
    return parser


def _node(args: argparse.Namespace) -> str:
    return "none" if args.no_node_agent else str(args.node)


def _node_binaries() -> list[Path]:
    from toka.devcluster.binaries import ensure_node_binaries
    from toka.devcluster.netpol import ensure_kube_router

    return [ensure_node_binaries(), ensure_kube_router()]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [TOOLS_CONTAINER]:
        # The tools sidecar and its startup probe import only the standard library.
        from toka.tools.server import main as tools_main

        return tools_main(argv[1:])
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
