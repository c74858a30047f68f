"""Kubernetes I/O: configuration and a thin async REST client."""

from toka.kube.client import ApiError, AsyncKube, Resource
from toka.kube.config import ConfigError, KubeConfig, from_env, load_kubeconfig

__all__ = [
    "ApiError",
    "AsyncKube",
    "ConfigError",
    "KubeConfig",
    "Resource",
    "from_env",
    "load_kubeconfig",
]
