"""The development cluster: a real control plane plus the dev node agent (dev and tests only)."""
