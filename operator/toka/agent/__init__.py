"""The agent runtime: the task loop, with no credentials and no workspace of its own."""
