"""Toka: a Kubernetes operator that runs LLM agents as Pods."""

__version__ = "0.1.0"
