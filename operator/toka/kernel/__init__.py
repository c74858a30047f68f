"""The kernel sidecar: the agent's only way to act, and the only enforcement point."""
