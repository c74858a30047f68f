"""What the containers of an agent pod agree on, in one place: each side imports it.

Standard library only and values only, so the agent (which must not import the
kernel) and the kernel's probe (which must start fast) can both use it.
"""

from __future__ import annotations

# Where the kernel listens; the agent, in the same pod, reaches it there.
KERNEL_ADDR_ENV = "TOKA_KERNEL_ADDR"
DEFAULT_KERNEL_ADDR = "127.0.0.1:8181"
