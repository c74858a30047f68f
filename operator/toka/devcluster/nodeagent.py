"""The dev node agent: a stand-in kubelet for Toka's pods (development and tests only).

It serves only pods labelled `toka.dev/agent`: registers Node `toka-dev` and
renews its Lease, binds those pods to it, and runs each container as a local
process (through `toka.devcluster.sandbox`: own mount namespace, real volume
directories at their mount paths, the pod's user). Pod status is what a
kubelet writes: phase, conditions, container states and exit codes.

What it honours: env with `valueFrom` and `$(VAR)` expansion; emptyDir,
configMap, secret, downwardAPI and projected volumes, with ServiceAccount
tokens from TokenRequest refreshed before expiry; native sidecars (init
containers with `restartPolicy: Always`: started first, startup probe,
restarted if they crash, stopped after the main containers); deletion
(SIGTERM, grace, SIGKILL, then the final DELETE); `activeDeadlineSeconds`.
Any image that is not Toka's gets `ErrImagePull`, then `ImagePullBackOff`.

Every pod shares the host's loopback, so each gets two addresses of its own in
127/8: its pod IP, and next to it (`pod_loopback`) what stands for the pod's
loopback, to which only `TOKA_KERNEL_ADDR`'s host is rewritten. Probes go to the
pod IP, as a kubelet's do: a listener on loopback alone fails an `httpGet` or
`tcpSocket` probe here as it does on a real node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from toka.contract import (
    ENTRYPOINT,
    IMAGE_REPOSITORY,
    KERNEL_ADDR_ENV,
    LABEL_AGENT,
    LABEL_DEV_NODE,
)
from toka.kube.client import (
    CONFIGMAPS,
    LEASES,
    NODES,
    PODS,
    SECRETS,
    SERVICEACCOUNTS,
    ApiError,
    AsyncKube,
)
from toka.kube.config import KubeConfig
from toka.kube.kubeconfig import load_kubeconfig
from toka.logs import configure

log = logging.getLogger("toka.nodeagent")

NODE_NAME = "toka-dev"
DEFAULT_IMAGES = (IMAGE_REPOSITORY, "toka")
# What Toka's "image" is on the dev node: this Python environment and the package source.
TOKA_RUNTIME_PATHS = sorted({sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[2])})
KUBELET_VERSION = "v1.35.4"
SA_TOKEN_MIN_SECONDS = 600
IMAGE_BACKOFF_SECONDS = 2.0
JSON = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_toka_image(image: str, repositories: tuple[str, ...]) -> bool:
    return any(image == r or image.startswith((r + ":", r + "@")) for r in repositories)


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names replaced, `$$` escapes, unknown kept."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(repl, text)


def pod_loopback(pod_ip: str) -> str:
    """The address that stands for a pod's loopback: the one after its pod IP
    (`NodeAgent.allocate_ip` hands out only even last octets)."""
    head, _, last = pod_ip.rpartition(".")
    return f"{head}.{int(last) + 1}"


def rewrite_kernel_addr(value: str, loopback: str) -> str:
    """`host:port` with the host replaced by the pod's own loopback address."""
    _, sep, port = value.rpartition(":")
    return f"{loopback}:{port}" if sep else loopback


class PodSetupError(Exception):
    """A pod that cannot start yet (missing ConfigMap/Secret): the kubelet keeps retrying."""


@dataclass
class ContainerRun:
    spec: JSON
    sidecar: bool = False
    init: bool = False
    proc: asyncio.subprocess.Process | None = None
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    started: bool = False
    ready: bool = False
    restarts: int = 0
    last_state: JSON = field(default_factory=dict)
    stopping: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self, image_id: str) -> JSON:
        out: JSON = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": image_id,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": self.started,
        }
        if self.proc is not None:
            out["containerID"] = f"toka-dev://{self.proc.pid}"
        return out


class PodRuntime:
    """One pod on the dev node, from volumes to final phase."""

    def __init__(self, agent: NodeAgent, pod: JSON, pod_ip: str):
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.ip = pod_ip
        self.loopback = pod_loopback(pod_ip)
        self.dir = agent.root / "pods" / f"{self.ns}_{self.name}_{self.uid[:8]}"
        spec = pod["spec"]
        self.inits = [
            ContainerRun(c, sidecar=c.get("restartPolicy") == "Always", init=True)
            for c in spec.get("initContainers", [])
        ]
        self.mains = [ContainerRun(c) for c in spec.get("containers", [])]
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.start_time = now_iso()
        self.conditions: dict[str, JSON] = {}
        self.volume_dirs: dict[str, Path] = {}
        self.token_tasks: list[asyncio.Task[None]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.done = asyncio.Event()
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._terminating = False
        self.env_cache: dict[str, dict[str, str]] = {}

    # --- status -------------------------------------------------------------

    def _cond(self, type_: str, ok: bool, reason: str | None = None) -> None:
        status = "True" if ok else "False"
        prev = self.conditions.get(type_)
        if prev and prev["status"] == status and prev.get("reason") == reason:
            return
        cond: JSON = {
            "type": type_,
            "status": status,
            "lastTransitionTime": now_iso(),
            "lastProbeTime": None,
        }
        if reason:
            cond["reason"] = reason
        self.conditions[type_] = cond

    def status(self) -> JSON:
        image_ids = {
            c.name: f"toka-dev://{c.spec.get('image', '')}" for c in self.inits + self.mains
        }
        inits_ok = all(
            (c.sidecar and c.started)
            or (
                not c.sidecar and "terminated" in c.state and c.state["terminated"]["exitCode"] == 0
            )
            for c in self.inits
        )
        self._cond("PodReadyToStartContainers", True)
        self._cond("Initialized", inits_ok, None if inits_ok else "ContainersNotInitialized")
        ready = (
            bool(self.mains)
            and all(c.ready for c in self.mains)
            and all(c.ready for c in self.inits if c.sidecar)
        )
        terminal = self.phase in ("Succeeded", "Failed")
        reason = "PodCompleted" if terminal else (None if ready else "ContainersNotReady")
        self._cond("ContainersReady", ready and not terminal, reason)
        self._cond("Ready", ready and not terminal, reason)
        status: JSON = {
            "phase": self.phase,
            "conditions": [
                self.conditions[t]
                for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
            ]
            + ([self.agent.scheduled_condition(self.pod)]),
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "initContainerStatuses": [c.status(image_ids[c.name]) for c in self.inits],
            "containerStatuses": [c.status(image_ids[c.name]) for c in self.mains],
            "reason": self.reason,
            "message": self.message,
        }
        return status

    def mark(self) -> None:
        self._dirty.set()

    async def _status_writer(self) -> None:
        """One write in flight; changes during a write cause one more (coalesced)."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            body = {"status": self.status()}
            for attempt in range(20):
                try:
                    await self.agent.kube.patch(PODS, self.name, body, self.ns, sub="status")
                    break
                except ApiError as err:
                    if err.not_found:
                        return
                    log.warning("pod %s/%s status write: %s", self.ns, self.name, err)
                except httpx.TransportError as err:
                    log.warning("pod %s/%s status write: %s", self.ns, self.name, err)
                await asyncio.sleep(min(0.2 * 2**attempt, 5))
            if self.done.is_set() and not self._dirty.is_set():
                return

    # --- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        self._writer = asyncio.create_task(self._status_writer())
        self.mark()
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        deadline_task = asyncio.create_task(self._deadline(int(deadline))) if deadline else None
        try:
            await self._run_pod()
        except asyncio.CancelledError:
            await self._kill_all(0)
            raise
        except Exception as err:
            log.exception("pod %s/%s crashed the runtime", self.ns, self.name)
            await self._kill_all(0)
            self._finish("Failed", "NodeAgentError", f"dev node agent: {err}")
        finally:
            if deadline_task:
                deadline_task.cancel()
            for t in self.token_tasks:
                t.cancel()
            self.done.set()
            self.mark()
            if self._writer:
                with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._writer, 30)

    def _finish(self, phase: str, reason: str | None = None, message: str | None = None) -> None:
        if self.phase in ("Succeeded", "Failed"):
            return
        self.phase, self.reason, self.message = phase, reason, message
        for c in self.inits + self.mains:
            c.ready = False
        self.mark()

    async def _deadline(self, seconds: int) -> None:
        await asyncio.sleep(seconds)
        self._terminating = True
        await self._kill_all(0)
        self._finish(
            "Failed",
            "DeadlineExceeded",
            f"Pod was active on the node longer than the specified deadline ({seconds}s)",
        )

    async def _run_pod(self) -> None:
        # Images first, as a kubelet pulls before it starts anything.
        bad = [
            c
            for c in self.inits + self.mains
            if not is_toka_image(str(c.spec.get("image", "")), self.agent.images)
        ]
        if bad:
            await self._image_backoff(bad)
            return
        while True:
            try:
                await self._prepare_volumes()
                break
            except PodSetupError as err:
                self.message = str(err)
                self.mark()
                await asyncio.sleep(2)
        self.message = None
        for c in self.inits:
            c.state = {"waiting": {"reason": "PodInitializing"}}
        for c in self.mains:
            c.state = {"waiting": {"reason": "PodInitializing"}}
        self.mark()
        for c in self.inits:
            if self._terminating:
                return
            if c.sidecar:
                await self._start(c)
                self.tasks.append(asyncio.create_task(self._supervise_sidecar(c)))
                if not await self._startup_probe(c):
                    return
            else:
                code = await self._run_to_end(c)
                if code != 0:
                    await self._stop_sidecars()
                    self._finish("Failed")
                    return
        if self._terminating:
            return
        self.phase = "Running"
        for c in self.mains:
            await self._start(c)
            c.started = True
            self.tasks.append(asyncio.create_task(self._readiness(c)))
        self.mark()
        codes = await asyncio.gather(*(self._wait(c) for c in self.mains))
        await self._stop_sidecars()
        if self._terminating:
            return
        self._finish("Succeeded" if all(code == 0 for code in codes) else "Failed")

    async def _image_backoff(self, bad: list[ContainerRun]) -> None:
        reason = "ErrImagePull"
        while not self._terminating:
            for c in bad:
                image = c.spec.get("image", "")
                c.state = {
                    "waiting": {
                        "reason": reason,
                        "message": (
                            f'Back-off pulling image "{image}"'
                            if reason == "ImagePullBackOff"
                            else f'Failed to pull image "{image}": the dev node runs only Toka\'s '
                            f"image ({', '.join(self.agent.images)}); {image!r} is not available"
                        ),
                    }
                }
            self.mark()
            await asyncio.sleep(IMAGE_BACKOFF_SECONDS)
            reason = "ImagePullBackOff" if reason == "ErrImagePull" else "ErrImagePull"

    # --- volumes ----------------------------------------------------------------

    async def _prepare_volumes(self) -> None:
        vol_root = self.dir / "volumes"
        vol_root.mkdir(parents=True, exist_ok=True)
        for vol in self.pod["spec"].get("volumes", []):
            name = vol["name"]
            path = vol_root / name
            path.mkdir(exist_ok=True)
            self.volume_dirs[name] = path
            if "emptyDir" in vol:
                path.chmod(0o777)
            elif "configMap" in vol:
                await self._write_source(path, vol["configMap"], CONFIGMAPS, "configMap")
            elif "secret" in vol:
                src = dict(vol["secret"], name=vol["secret"].get("secretName"))
                await self._write_source(path, src, SECRETS, "secret")
            elif "downwardAPI" in vol:
                self._write_downward(
                    path,
                    vol["downwardAPI"].get("items", []),
                    vol["downwardAPI"].get("defaultMode", 0o644),
                )
            elif "projected" in vol:
                await self._write_projected(path, vol["projected"])
            else:
                raise PodSetupError(f"volume {name}: type not supported on the dev node")

    async def _write_source(
        self, path: Path, src: JSON, res: Any, kind: str, mode: int | None = None
    ) -> None:
        try:
            obj = await self.agent.kube.get(res, src["name"], self.ns)
        except ApiError as err:
            if err.not_found and src.get("optional"):
                return
            if err.not_found:
                raise PodSetupError(
                    f'MountVolume.SetUp failed: {kind} "{src["name"]}" not found'
                ) from err
            raise
        data: dict[str, bytes] = {}
        for k, v in (obj.get("data") or {}).items():
            data[k] = base64.b64decode(v) if kind == "secret" else v.encode()
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v)
        file_mode = mode if mode is not None else src.get("defaultMode", 0o644)
        items = src.get("items")
        pairs = (
            [(i["key"], i["path"], i.get("mode", file_mode)) for i in items]
            if items
            else [(k, k, file_mode) for k in data]
        )
        for key, rel, m in pairs:
            if key not in data:
                raise PodSetupError(f'{kind} "{src["name"]}" has no key "{key}"')
            self._write_file(path / rel, data[key], m)

    def _field(self, ref: str) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": self.ip,
            "status.hostIP": "127.0.0.1",
            "status.podIPs": self.ip,
        }
        if ref in simple:
            return str(simple[ref])
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", ref)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        if ref in ("metadata.labels", "metadata.annotations"):
            items = meta.get(ref.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
        raise PodSetupError(f"fieldRef {ref!r} is not supported")

    def _write_downward(self, path: Path, items: list[JSON], mode: int) -> None:
        for item in items:
            if "fieldRef" in item:
                self._write_file(
                    path / item["path"],
                    self._field(item["fieldRef"]["fieldPath"]).encode(),
                    item.get("mode", mode),
                )

    async def _write_projected(self, path: Path, proj: JSON) -> None:
        mode = proj.get("defaultMode", 0o644)
        for source in proj.get("sources", []):
            if "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                target = path / sat["path"]
                lifetime = max(int(sat.get("expirationSeconds", 3600)), SA_TOKEN_MIN_SECONDS)
                expiry = await self._request_token(target, sat.get("audience"), lifetime, mode)
                self.token_tasks.append(
                    asyncio.create_task(
                        self._refresh_token(target, sat.get("audience"), lifetime, mode, expiry)
                    )
                )
            elif "configMap" in source:
                await self._write_source(path, source["configMap"], CONFIGMAPS, "configMap", mode)
            elif "secret" in source:
                await self._write_source(path, source["secret"], SECRETS, "secret", mode)
            elif "downwardAPI" in source:
                self._write_downward(path, source["downwardAPI"].get("items", []), mode)

    async def _request_token(
        self, target: Path, audience: str | None, lifetime: int, mode: int
    ) -> float:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body: JSON = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": lifetime,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            },
        }
        if audience:
            body["spec"]["audiences"] = [audience]
        try:
            resp = await self.agent.kube.create(
                SERVICEACCOUNTS, body, self.ns, name=sa, sub="token"
            )
        except ApiError as err:
            raise PodSetupError(f"TokenRequest for ServiceAccount {sa!r}: {err.message}") from err
        self._write_file(target, resp["status"]["token"].encode(), mode)
        exp = datetime.fromisoformat(resp["status"]["expirationTimestamp"].replace("Z", "+00:00"))
        return exp.timestamp()

    async def _refresh_token(
        self, target: Path, audience: str | None, lifetime: int, mode: int, expiry: float
    ) -> None:
        issued = time.time()
        while True:
            # As the kubelet: refresh at 80% of the lifetime (or sooner if asked).
            wait = max(1.0, (expiry - issued) * self.agent.token_refresh_fraction)
            await asyncio.sleep(wait)
            try:
                issued = time.time()
                expiry = await self._request_token(target, audience, lifetime, mode)
            except (PodSetupError, httpx.TransportError) as err:
                log.warning("pod %s/%s token refresh: %s", self.ns, self.name, err)
                issued = time.time() - (expiry - time.time()) * 0.5

    def _write_file(self, target: Path, data: bytes, mode: int) -> None:
        """Atomic: a reader never sees a half-written token or key."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        fs_group = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        if fs_group is not None:
            os.chown(tmp, 0, int(fs_group))
            os.chmod(tmp, mode | 0o040)
        os.replace(tmp, target)

    # --- containers -------------------------------------------------------------

    async def _container_env(self, spec: JSON) -> dict[str, str]:
        path_dirs = [
            str(Path(sys.executable).parent),
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        env: dict[str, str] = {
            "PATH": ":".join(path_dirs),
            "HOME": "/",
            "HOSTNAME": self.name,
            "PYTHONDONTWRITEBYTECODE": "1",
            "KUBERNETES_SERVICE_HOST": self.agent.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.agent.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.agent.api_port),
        }
        for src in spec.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref, res, b64 = src["configMapRef"], CONFIGMAPS, False
            else:
                ref, res, b64 = src["secretRef"], SECRETS, True
            try:
                obj = await self.agent.kube.get(res, ref["name"], self.ns)
            except ApiError as err:
                if err.not_found and ref.get("optional"):
                    continue
                raise PodSetupError(f"envFrom {ref['name']!r}: {err.message}") from err
            for k, v in (obj.get("data") or {}).items():
                env[prefix + k] = base64.b64decode(v).decode() if b64 else v
        for item in spec.get("env", []):
            name = item["name"]
            if "value" in item or "valueFrom" not in item:
                env[name] = expand(str(item.get("value", "")), env)
            else:
                env[name] = await self._value_from(item["valueFrom"], spec)
            if name == KERNEL_ADDR_ENV:
                env[name] = rewrite_kernel_addr(env[name], self.loopback)
        return env

    async def _value_from(self, src: JSON, spec: JSON) -> str:
        if "fieldRef" in src:
            return self._field(src["fieldRef"]["fieldPath"])
        for key, res, b64 in (
            ("secretKeyRef", SECRETS, True),
            ("configMapKeyRef", CONFIGMAPS, False),
        ):
            if key in src:
                ref = src[key]
                try:
                    obj = await self.agent.kube.get(res, ref["name"], self.ns)
                except ApiError as err:
                    if err.not_found and ref.get("optional"):
                        return ""
                    raise PodSetupError(
                        f"couldn't find key {ref['key']} in {key[:-6]} {self.ns}/{ref['name']}"
                    ) from err
                value = (obj.get("data") or {}).get(ref["key"])
                if value is None:
                    if ref.get("optional"):
                        return ""
                    raise PodSetupError(
                        f"couldn't find key {ref['key']} in {key[:-6]} {self.ns}/{ref['name']}"
                    )
                return base64.b64decode(value).decode() if b64 else str(value)
        if "resourceFieldRef" in src:
            res = src["resourceFieldRef"]["resource"]
            kind, _, what = res.partition(".")
            value = ((spec.get("resources") or {}).get(kind) or {}).get(what)
            return str(value) if value is not None else "0"
        raise PodSetupError(f"valueFrom {sorted(src)} is not supported")

    def _sandbox_spec(self, c: ContainerRun, env: dict[str, str]) -> JSON:
        spec = c.spec
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = spec.get("securityContext") or {}
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
        groups = list(pod_sc.get("supplementalGroups", []))
        if pod_sc.get("fsGroup") is not None:
            groups.append(pod_sc["fsGroup"])
        mounts = []
        for vm in spec.get("volumeMounts", []):
            base = self.volume_dirs.get(vm["name"])
            if base is None:
                raise PodSetupError(f"volumeMount {vm['name']!r} names no volume")
            source = base / vm["subPath"] if vm.get("subPath") else base
            mounts.append(
                {
                    "source": str(source),
                    "target": vm["mountPath"],
                    "readOnly": bool(vm.get("readOnly")),
                }
            )
        command = [expand(a, env) for a in spec.get("command", [])] or list(ENTRYPOINT)
        args = [expand(a, env) for a in spec.get("args", [])]
        return {
            "argv": command + args,
            "env": env,
            "cwd": spec.get("workingDir") or "/",
            "mounts": mounts,
            "hide": [str(p) for p in self.agent.hidden_paths],
            "keep": TOKA_RUNTIME_PATHS,
            "readOnlyRoot": bool(sc.get("readOnlyRootFilesystem")),
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "scratch": str(self.dir / "scratch" / f"{c.name}-{c.restarts}"),
        }

    async def _start(self, c: ContainerRun) -> None:
        while True:
            try:
                env = await self._container_env(c.spec)
                spec = self._sandbox_spec(c, env)
                break
            except PodSetupError as err:
                # As the kubelet: the container waits, named reason, and we retry.
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(err)}}
                self.mark()
                await asyncio.sleep(2)
        spec_file = self.dir / f".{c.name}.spec.json"
        fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(spec, fh)
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{c.name}.log").open("ab") as out:
            c.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "toka.devcluster.sandbox",
                str(spec_file),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
        c.state = {"running": {"startedAt": now_iso()}}
        c.stopping = False
        if not c.spec.get("startupProbe"):
            c.started = True
        if not c.spec.get("readinessProbe") and not (c.sidecar and c.spec.get("startupProbe")):
            c.ready = True
        self.mark()

    def _terminated(self, c: ContainerRun, code: int) -> JSON:
        started = c.state.get("running", {}).get("startedAt", now_iso())
        if code < 0:
            return {
                "exitCode": 128 - code,
                "signal": -code,
                "reason": "Error",
                "startedAt": started,
                "finishedAt": now_iso(),
            }
        return {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": started,
            "finishedAt": now_iso(),
        }

    async def _wait(self, c: ContainerRun) -> int:
        assert c.proc is not None
        code = await c.proc.wait()
        c.state = {"terminated": self._terminated(c, code)}
        c.ready = False
        self.mark()
        return self._exit_code(c)

    @staticmethod
    def _exit_code(c: ContainerRun) -> int:
        return int(c.state.get("terminated", {}).get("exitCode", 1))

    async def _run_to_end(self, c: ContainerRun) -> int:
        await self._start(c)
        return await self._wait(c)

    async def _supervise_sidecar(self, c: ContainerRun) -> None:
        """Restart a sidecar that exits while the pod runs (restartPolicy Always)."""
        backoff = 1.0
        while True:
            assert c.proc is not None
            code = await c.proc.wait()
            term = self._terminated(c, code)
            if c.stopping or self._terminating or self.phase in ("Succeeded", "Failed"):
                c.state = {"terminated": term}
                c.ready = False
                self.mark()
                return
            c.last_state = {"terminated": term}
            c.restarts += 1
            c.ready = False
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {backoff:.0f}s restarting failed container",
                }
            }
            self.mark()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30)
            if c.stopping or self._terminating:
                return
            await self._start(c)

    async def _probe(self, probe: JSON, c: ContainerRun) -> bool:
        """As the kubelet: `httpGet` and `tcpSocket` to the pod IP, never its loopback."""
        timeout = float(probe.get("timeoutSeconds", 1))
        if "httpGet" in probe:
            hg = probe["httpGet"]
            port = self._port(hg["port"], c)
            host = hg.get("host") or self.ip
            scheme = hg.get("scheme", "HTTP").lower()
            try:
                async with httpx.AsyncClient(verify=False, timeout=timeout) as client:  # noqa: S501
                    resp = await client.get(f"{scheme}://{host}:{port}{hg.get('path', '/')}")
                return 200 <= resp.status_code < 400
            except httpx.HTTPError:
                return False
        if "tcpSocket" in probe:
            port = self._port(probe["tcpSocket"]["port"], c)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.ip, port), timeout)
                writer.close()
                return True
            except (OSError, TimeoutError):
                return False
        if "exec" in probe:
            env = await self._container_env(c.spec)
            spec = self._sandbox_spec(c, env)
            spec["argv"] = probe["exec"]["command"]
            spec["scratch"] = str(self.dir / "scratch" / f"{c.name}-probe")
            spec_file = self.dir / f".{c.name}.probe.json"
            fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(spec, fh)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "toka.devcluster.sandbox",
                str(spec_file),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                return await asyncio.wait_for(proc.wait(), timeout + 5) == 0
            except TimeoutError:
                proc.kill()
                return False
        return True

    @staticmethod
    def _port(port: int | str, c: ContainerRun) -> int:
        if isinstance(port, int):
            return port
        for p in c.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise PodSetupError(f"container {c.name}: no port named {port!r}")

    async def _startup_probe(self, c: ContainerRun) -> bool:
        """Wait until a sidecar's startup probe succeeds; False if the pod ended meanwhile."""
        probe = c.spec.get("startupProbe")
        if probe:
            period = float(probe.get("periodSeconds", 10))
            threshold = int(probe.get("failureThreshold", 3))
            await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
            failures = 0
            while not await self._probe(probe, c):
                if self._terminating or self.phase in ("Succeeded", "Failed"):
                    return False
                failures += 1
                if failures >= threshold and c.proc is not None and c.proc.returncode is None:
                    # As the kubelet: a failed startup probe kills the container.
                    c.proc.kill()
                    failures = 0
                await asyncio.sleep(min(period, 0.2) if failures < 50 else period)
        c.started = True
        c.ready = not c.spec.get("readinessProbe")
        if c.spec.get("readinessProbe"):
            self.tasks.append(asyncio.create_task(self._readiness(c)))
        self.mark()
        return not self._terminating

    async def _readiness(self, c: ContainerRun) -> None:
        probe = c.spec.get("readinessProbe")
        if not probe:
            return
        period = float(probe.get("periodSeconds", 10))
        while c.proc is not None and c.proc.returncode is None:
            ok = await self._probe(probe, c)
            if ok != c.ready:
                c.ready = ok
                self.mark()
            await asyncio.sleep(min(period, 1.0) if not ok else period)

    async def _signal(self, c: ContainerRun, sig: int) -> None:
        """One signal to the container's process group (the sandbox made it a session).

        Once only: a second SIGTERM can land after a process has finished its
        own clean shutdown and kill it on the way out.
        """
        if c.proc is None or c.proc.returncode is not None:
            return
        try:
            os.killpg(c.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(sig)

    async def _stop(self, c: ContainerRun, grace: float) -> None:
        """SIGTERM, the grace period, then SIGKILL. The container's own waiter records its
        terminated state (`_wait`, `_run_to_end` or `_supervise_sidecar`)."""
        c.stopping = True
        if c.proc is None or c.proc.returncode is not None:
            return
        await self._signal(c, signal.SIGTERM)
        try:
            await asyncio.wait_for(c.proc.wait(), grace)
        except TimeoutError:
            await self._signal(c, signal.SIGKILL)
            await c.proc.wait()
        # Let the waiter record the state before the pod's phase is decided.
        await asyncio.sleep(0)

    async def _stop_sidecars(self) -> None:
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        for c in reversed([c for c in self.inits if c.sidecar]):
            await self._stop(c, grace)

    async def _kill_all(self, grace: float) -> None:
        self._terminating = True
        for c in self.mains:
            await self._stop(c, grace)
        for c in reversed(self.inits):
            await self._stop(c, grace)

    async def terminate(self, grace: float) -> None:
        """Graceful deletion: main containers, then sidecars, each SIGTERM then SIGKILL."""
        self._terminating = True
        await self._kill_all(grace)
        for t in self.tasks:
            t.cancel()
        if self.phase not in ("Succeeded", "Failed"):
            codes = [self._exit_code(c) for c in self.mains if "terminated" in c.state]
            ok = bool(codes) and len(codes) == len(self.mains) and all(x == 0 for x in codes)
            self._finish("Succeeded" if ok else "Failed")
        await self.done.wait()


class NodeAgent:
    """Registers the node, keeps its Lease, and runs the pods bound to it."""

    def __init__(
        self,
        kube: AsyncKube,
        root: Path,
        *,
        node_name: str = NODE_NAME,
        images: tuple[str, ...] = DEFAULT_IMAGES,
        hidden_paths: tuple[Path, ...] = (),
        token_refresh_fraction: float = 0.8,
    ):
        self.kube = kube
        self.root = Path(root)
        self.node_name = node_name
        self.images = images
        # Pods must not see other pods' volumes nor the cluster's credentials.
        self.hidden_paths = (self.root, *hidden_paths)
        self.token_refresh_fraction = token_refresh_fraction
        url = httpx.URL(kube.config.server)
        self.api_host = url.host
        self.api_port = url.port or 443
        self.runtimes: dict[str, PodRuntime] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._deleting: set[str] = set()
        # A random /16 of 127/8 per node agent, so two dev nodes on one machine don't collide.
        self._net = random.randint(2, 250)  # noqa: S311
        self._next_ip = 1

    def allocate_ip(self) -> str:
        """A pod IP, with an even last octet: the odd one after it is the pod's loopback."""
        n = 2 * self._next_ip
        self._next_ip += 1
        return f"127.{self._net}.{n // 250}.{n % 250 + 2}"

    def scheduled_condition(self, pod: JSON) -> JSON:
        for c in (pod.get("status") or {}).get("conditions", []):
            if c.get("type") == "PodScheduled":
                return dict(c)
        return {
            "type": "PodScheduled",
            "status": "True",
            "lastTransitionTime": now_iso(),
            "lastProbeTime": None,
        }

    # --- node and lease ---------------------------------------------------------------

    def _node_status(self) -> JSON:
        cpus = str(os.cpu_count() or 1)
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
        now = now_iso()
        return {
            "capacity": {"cpu": cpus, "memory": mem, "pods": "110"},
            "allocatable": {"cpu": cpus, "memory": mem, "pods": "110"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "toka dev node agent is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": socket.gethostname()},
            ],
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "toka-dev://1",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "toka dev node",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    async def register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    LABEL_DEV_NODE: "true",
                },
            },
        }
        try:
            await self.kube.create(NODES, body)
        except ApiError as err:
            if not err.conflict:
                raise
        await self.kube.patch(NODES, self.node_name, {"status": self._node_status()}, sub="status")

    async def _lease_loop(self, stop: asyncio.Event) -> None:
        lease: JSON = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": 40,
                "renewTime": now_micro(),
            },
        }
        beats = 0
        while not stop.is_set():
            try:
                try:
                    await self.kube.patch(
                        LEASES,
                        self.node_name,
                        {"spec": {"renewTime": now_micro(), "holderIdentity": self.node_name}},
                        "kube-node-lease",
                    )
                except ApiError as err:
                    if not err.not_found:
                        raise
                    lease["spec"]["renewTime"] = now_micro()
                    await self.kube.create(LEASES, lease, "kube-node-lease")
                beats += 1
                if beats % 6 == 0:
                    await self.kube.patch(
                        NODES, self.node_name, {"status": self._node_status()}, sub="status"
                    )
            except (ApiError, httpx.TransportError) as err:
                log.warning("lease renewal: %s", err)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await stop.wait()

    # --- pods ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        use_pidfd_child_watcher()
        self.root.mkdir(parents=True, exist_ok=True)
        await self.register_node()
        lease = asyncio.create_task(self._lease_loop(stop))
        # The watch starts with a list, so a pod created from now on is seen.
        watch = asyncio.create_task(self._watch(stop))
        if ready is not None:
            ready.set()
        await stop.wait()
        watch.cancel()
        lease.cancel()
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(watch, lease, *self.tasks.values(), return_exceptions=True)

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async for event in self.kube.list_and_watch(
                    PODS, label_selector=LABEL_AGENT, stop=stop
                ):
                    await self.on_pod_event(event["type"], event["object"])
            except (ApiError, httpx.TransportError, httpx.StreamError) as err:
                log.warning("pod watch: %s; relisting", err)
                await asyncio.sleep(1)

    async def on_pod_event(self, kind: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        spec = pod["spec"]
        if kind == "DELETED":
            await self._forget(uid, grace=0)
            return
        node = spec.get("nodeName")
        if not node:
            await self._bind(pod)
            return
        if node != self.node_name:
            return
        if pod["metadata"].get("deletionTimestamp"):
            if uid not in self._deleting:
                self._deleting.add(uid)
                grace = float(pod["metadata"].get("deletionGracePeriodSeconds", 30))
                asyncio.create_task(self._delete(pod, grace))  # noqa: RUF006
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if uid in self.runtimes or phase in ("Succeeded", "Failed"):
            return
        if (pod.get("status") or {}).get("startTime"):
            # Started by an earlier node agent whose processes died with it.
            await self._fail_orphan(pod)
            return
        runtime = PodRuntime(self, pod, self.allocate_ip())
        self.runtimes[uid] = runtime
        self.tasks[uid] = asyncio.create_task(runtime.run())

    async def _bind(self, pod: JSON) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            await self.kube.create(PODS, body, meta["namespace"], name=meta["name"], sub="binding")
        except ApiError as err:
            if err.status not in (404, 409):
                log.warning("bind %s/%s: %s", meta["namespace"], meta["name"], err)

    async def _fail_orphan(self, pod: JSON) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            await self.kube.patch(
                PODS,
                meta["name"],
                {
                    "status": {
                        "phase": "Failed",
                        "reason": "NodeAgentRestarted",
                        "message": "the dev node agent restarted and this pod's "
                        "processes ended with it",
                    }
                },
                meta["namespace"],
                sub="status",
            )

    async def _delete(self, pod: JSON, grace: float) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        runtime = self.runtimes.get(uid)
        if runtime is not None:
            await runtime.terminate(grace)
        with contextlib.suppress(ApiError, httpx.TransportError):
            await self.kube.delete(
                PODS, meta["name"], meta["namespace"], grace_period_seconds=0, preconditions_uid=uid
            )
        await self._forget(uid, grace=0)

    async def _forget(self, uid: str, grace: float) -> None:
        runtime = self.runtimes.pop(uid, None)
        task = self.tasks.pop(uid, None)
        self._deleting.discard(uid)
        if runtime is not None:
            if not runtime.done.is_set():
                await runtime.terminate(grace)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            shutil.rmtree(runtime.dir, ignore_errors=True)


async def run_node_agent(
    config: KubeConfig,
    root: Path,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    hidden_paths: tuple[Path, ...] = (),
) -> None:
    async with AsyncKube(config) as kube:
        await NodeAgent(kube, root, hidden_paths=hidden_paths).run(stop, ready)


def use_pidfd_child_watcher() -> None:
    """Exit codes are the pod's phase: never let asyncio's threaded watcher lose one.

    The default watcher reports 255 when another waiter reaped the child
    first; a pidfd watcher holds the process itself and cannot miss it.
    """
    if sys.version_info < (3, 12):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            watcher = asyncio.PidfdChildWatcher()
            watcher.attach_loop(asyncio.get_running_loop())
            asyncio.set_child_watcher(watcher)


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit(
            "the dev node agent needs root: it gives each container its own mount namespace "
            "(real volume paths, read-only root, the pod's user). Run it as root, or use a real "
            "cluster (see README: Install on a cluster)."
        )


def main(root: Path, kubeconfig: str | None, context: str | None = None) -> int:
    require_root()
    configure()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path:
        raise SystemExit("toka node-agent: give --kubeconfig or set KUBECONFIG")
    config = load_kubeconfig(path, context)
    hidden = tuple(
        {
            *(Path(p).resolve().parent for p in path.split(os.pathsep) if p),
            *(
                Path(p).resolve().parent
                for p in (config.ca_file, config.cert_file, config.key_file)
                if p
            ),
        }
    )

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_node_agent(config, root, stop, hidden_paths=hidden)

    asyncio.run(amain())
    return 0
