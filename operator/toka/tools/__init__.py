"""The tools sidecar: runs permitted tool calls in /workspace. Standard library only."""
