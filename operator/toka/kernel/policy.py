"""Default deny: every request is checked against the grant; every decision is audited.

The audit record is one JSON line on stdout (the cluster's log pipeline
keeps it); a denial also counts into `status.run.denials`. With tracing on,
each decision is also a span (`policy <op>`), a child of the tool call or LLM
call it decided, carrying the same redacted fields as the audit line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from toka.api.capabilities import Capability, Grant
from toka.llm.sanitize import Redactor
from toka.tracing import NO_TRACER, Tracer

JSON = dict[str, Any]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    capability: Capability | None
    reason: str


class Policy:
    def __init__(
        self,
        grant: Grant,
        *,
        agent: str,
        redact: Redactor,
        on_denial: Callable[[str], None] | None = None,
        out: TextIO | None = None,
        tracer: Tracer = NO_TRACER,
    ):
        self.grant = grant
        self.tracer = tracer
        self.agent = agent
        self.redact = redact
        self.on_denial = on_denial
        self.out = out or sys.stdout

    def update(self, capabilities: list[str]) -> None:
        self.grant = Grant.from_strings(capabilities)

    def check(
        self, op: str, domain: str, action: str, target: str = "", **context: Any
    ) -> Decision:
        cap = self.grant.permits(domain, action, target)
        if cap is not None:
            decision = Decision(True, cap, f"allowed by {cap}")
        else:
            wanted = f"{domain}:{action}" + (f":{target}" if target else "")
            decision = Decision(
                False,
                None,
                f"{op} needs a capability covering {wanted}; the agent "
                f"has: {', '.join(self.grant.strings()) or 'none'}",
            )
        self.audit(op, decision, target=target, **context)
        if not decision.allowed and self.on_denial is not None:
            self.on_denial(self.redact(decision.reason))
        return decision

    def deny(self, op: str, reason: str, **context: Any) -> Decision:
        """A refusal not about capabilities (bad path, private address): audited and counted."""
        decision = Decision(False, None, reason)
        self.audit(op, decision, **context)
        if self.on_denial is not None:
            self.on_denial(self.redact(reason))
        return decision

    def audit(self, op: str, decision: Decision, **context: Any) -> None:
        record: JSON = {
            "ts": round(time.time(), 3),
            "audit": "toka.kernel",
            "agent": self.agent,
            "op": op,
            "decision": "allow" if decision.allowed else "deny",
            "reason": decision.reason,
        }
        if decision.capability is not None:
            record["capability"] = str(decision.capability)
        record.update({k: v for k, v in context.items() if v not in (None, "")})
        self.out.write(self.redact(json.dumps(record, default=str)) + "\n")
        self.out.flush()
        if self.tracer.enabled:
            self._trace(op, record)

    def _trace(self, op: str, record: JSON) -> None:
        attributes = {
            f"toka.policy.{k}": self.redact(str(v))
            for k, v in record.items()
            if k not in ("ts", "audit", "agent", "op")
        }
        self.tracer.start(f"policy {op}", {"toka.policy.op": op, **attributes}).end()
