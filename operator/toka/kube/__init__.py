"""Kubernetes I/O: configuration and a thin async REST client.

Loading a kubeconfig is `toka.kube.kubeconfig`, not re-exported here: it
imports the `kubernetes` library, which the kernel must not load.
"""

from toka.kube.client import ApiError, AsyncKube, Resource
from toka.kube.config import ConfigError, KubeConfig

__all__ = [
    "ApiError",
    "AsyncKube",
    "ConfigError",
    "KubeConfig",
    "Resource",
]
