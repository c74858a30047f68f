"""Credentials from kubeconfig files, obtained by the `kubernetes` library.

kubectl's rules, kept by the library rather than by us: `KUBECONFIG` lists
files that are merged (the first file to name a context, cluster or user
wins), `--context` picks a context other than the current one, an `exec`
plugin (EKS, GKE, AKS with Entra ID) or an auth provider is run again when
its token expires, and `*-data` fields become files removed at exit.

Requests still go through `AsyncKube`; only the `Authorization` header comes
from the library, through `KubeConfig.credential`. The kernel never imports
this module (an import-linter contract): in a pod it uses `in_cluster`.

The library waits for an exec plugin with no timeout. Every call into it here
runs on one worker thread per credential, waited for at most
`PLUGIN_TIMEOUT_SECONDS`: a plugin that hangs makes each API call fail with a
`ConfigError` naming the user and the plugin, instead of blocking them all,
and is not started again while it still runs.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes.client import Configuration
from kubernetes.config import ConfigException, load_kube_config
from kubernetes.config.kube_config import KubeConfigMerger

from toka.kube.config import ConfigError, KubeConfig, in_cluster

__all__ = ["ConfigError", "KubeconfigCredential", "from_env", "load_kubeconfig"]

# How long a call waits for the library (an exec plugin's run): long enough for an
# interactive login, bounded so that a hung plugin does not block every API call.
PLUGIN_TIMEOUT_SECONDS = 60.0
T = TypeVar("T")


class _Worker:
    """Runs calls into the library one at a time on a daemon thread of its own; each
    caller waits at most `timeout`. While a call hangs, the calls queued behind it wait
    their turn (bounded as well) and those given up on are dropped, never run late."""

    def __init__(self, what: str, timeout: float):
        self.what = what
        self.timeout = timeout
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def call(self, work: Callable[[], T]) -> T:
        with self._start:
            if self._thread is None:
                # A daemon: a plugin that never ends must not keep the process alive.
                self._thread = threading.Thread(
                    target=self._serve, name="kubeconfig-credential", daemon=True
                )
                self._thread.start()
        future: Future[T] = Future()
        self._queue.put((work, future))
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()  # if still queued: dropped
            raise ConfigError(
                f"{self.what} did not answer within {self.timeout:g} s; "
                "the call is given up (is the plugin waiting for input or a network?)"
            ) from None

    def _serve(self) -> None:
        while True:
            work, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as err:  # the caller's to raise
                future.set_exception(err)


class KubeconfigCredential:
    """A kubeconfig user's token; the library runs its exec plugin again near expiry.

    Thread-safe: a token is obtained once however many requests wait for it, and no
    request waits for it longer than the worker's timeout.
    """

    def __init__(
        self, configuration: Configuration, load: Callable[[], Configuration], worker: _Worker
    ):
        self._configuration = configuration
        self._load = load
        self._worker = worker

    def authorization(self) -> str | None:
        # Calls the library's refresh hook: the plugin again once the token expires.
        return self._worker.call(lambda: self._configuration.get_api_key_with_prefix("BearerToken"))

    def renew(self, refused: str | None) -> None:
        def renew() -> None:
            if self._configuration.api_key.get("BearerToken") == refused:
                self._configuration = self._load()

        self._worker.call(renew)


def load_kubeconfig(
    paths: str | os.PathLike[str],
    context: str | None = None,
    *,
    plugin_timeout: float = PLUGIN_TIMEOUT_SECONDS,
) -> KubeConfig:
    """Any kubeconfig kubectl reads; `paths` as in `KUBECONFIG` (several, merged).
    `plugin_timeout`: how long any call waits for the user's exec plugin."""
    where = os.fspath(paths)
    try:
        merged = KubeConfigMerger(where)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, yaml.YAMLError) as err:
        raise ConfigError(f"kubeconfig {where}: {err}") from None
    if merged.config is None:
        raise ConfigError(f"kubeconfig {where}: no such file")
    # kubectl's rule, which the library does not follow: the first file to set it wins.
    current = next(
        (
            doc["current-context"]
            for doc in merged.config_files.values()
            if doc.get("current-context")
        ),
        None,
    )
    name = context or current
    contexts = {c["name"]: c.value.get("context") or {} for c in merged.config.value["contexts"]}
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        said = f"no context {name!r}" if name else "no current context"
        raise ConfigError(f"kubeconfig {where}: {said} (contexts: {known}; choose with --context)")
    chosen = contexts[name]
    user = chosen.get("user")
    users = {u["name"]: u.value.get("user") or {} for u in merged.config.value.get("users") or []}
    command = (users.get(user) or {}).get("exec", {}).get("command")
    what = f"kubeconfig {where}, context {name!r}: user {user!r}"
    worker = _Worker(f"{what}'s exec plugin {command!r}" if command else what, plugin_timeout)

    def load() -> Configuration:
        configuration = Configuration()
        try:
            load_kube_config(  # type: ignore[no-untyped-call]
                config_file=where, context=name, client_configuration=configuration
            )
        except ConfigException as err:
            raise ConfigError(f"kubeconfig {where}, context {name!r}: {err}") from None
        return configuration

    configuration = worker.call(load)
    if configuration.proxy or configuration.tls_server_name:
        raise ConfigError(
            f"kubeconfig {where}, context {name!r}: proxy-url and tls-server-name are not supported"
        )
    header = configuration.api_key.get("BearerToken")
    if user and not header and not configuration.cert_file:
        raise ConfigError(
            f"kubeconfig {where}, context {name!r}: user {user!r} gave no credentials "
            "(a failed exec plugin says why above)"
        )
    return KubeConfig(
        server=configuration.host,
        ca_file=configuration.ssl_ca_cert,
        cert_file=configuration.cert_file,
        key_file=configuration.key_file,
        namespace=chosen.get("namespace") or "default",
        insecure=not configuration.verify_ssl,
        credential=KubeconfigCredential(configuration, load, worker) if header else None,
    )


def from_env(context: str | None = None, kubeconfig: str | None = None) -> KubeConfig:
    """`kubeconfig`, else $KUBECONFIG, else in-cluster (without a context), else ~/.kube/config."""
    paths = kubeconfig or os.environ.get("KUBECONFIG")
    if paths:
        return load_kubeconfig(paths, context)
    if context is None:
        try:
            return in_cluster()
        except ConfigError:
            pass
    default = Path.home() / ".kube" / "config"
    if default.exists():
        return load_kubeconfig(default, context)
    raise ConfigError(
        "no cluster configuration: set KUBECONFIG, run in a pod, or create ~/.kube/config "
        "(for a local cluster: `toka dev up`)"
    )
