"""`toka agent`: the task loop. Prompt → LLM (through the kernel) → tool calls → result.

A task succeeds only by an explicit `finish_task` call with status
`succeeded`; nothing searches the model's prose for words like "error". A
failed task is retried once at a lower temperature; a refusal by the kernel
(denied capability, spent budget) is not retried. Tasks run in order and
the first failure stops the attempt: the exit code is what the Pod phase
reports, and the next attempt resumes after the last completed task.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from toka.agent.client import KernelClient, KernelError
from toka.agent.inference import missing_capabilities
from toka.agent.prompts import system_prompt, task_prompt
from toka.api.capabilities import MCP_PREFIX, Grant
from toka.contract import DEFAULT_KERNEL_ADDR as DEFAULT_ADDR
from toka.contract import KERNEL_ADDR_ENV as ADDR_ENV
from toka.logs import configure

log = logging.getLogger("toka.agent")
JSON = dict[str, Any]
MAX_TURNS = 12
MAX_TOOL_RESULT = 16_000
NOT_RETRIED = {"denied", "budget_exceeded", "replay", "llm_unavailable"}
TERMINATED = 128 + signal.SIGTERM  # the exit code of a run ended by SIGTERM, as a shell says it


class TaskOutcome:
    def __init__(self, ok: bool, text: str, retry: bool = True):
        self.ok = ok
        self.text = text
        self.retry = retry


class Executor:
    def __init__(self, kernel: KernelClient, *, max_turns: int = MAX_TURNS):
        self.kernel = kernel
        self.max_turns = max_turns
        self.me: JSON = {}
        self._turns: dict[str, int] = {}

    async def run(self) -> int:
        self.me = await self.kernel.describe()
        workspace = self.me.get("workspace") or {}
        if workspace.get("state") == "Failed":
            # Before any LLM call: the work would start from the wrong files.
            print(
                f"toka agent: the workspace could not be set up: {workspace.get('reason')}: "
                f"{workspace.get('message')}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        grant = Grant.from_strings(self.me["capabilities"])
        todo = [t for t in self.me["tasks"] if t["state"] != "Succeeded"]
        done = len(self.me["tasks"]) - len(todo)
        if done:
            await self.kernel.send(
                "EmitObservation",
                message=f"resuming: {done} task(s) already done in an earlier attempt",
            )
        for task in todo:
            gaps = missing_capabilities(task["description"], grant)
            if gaps:
                await self.kernel.send(
                    "EmitObservation",
                    message=(
                        f"task {task['name']} may need {', '.join(gaps)}, "
                        "which this agent does not have"
                    ),
                )
        index = 0
        while index < len(todo):
            task = todo[index]
            if not await self.run_task(task):
                return 1
            index += 1
            if index == len(todo):
                # Follow-ups the agent scheduled for itself while working.
                fresh = await self.kernel.describe()
                known = {t["name"] for t in todo}
                todo += [
                    t
                    for t in fresh["tasks"]
                    if t["name"] not in known and t["state"] != "Succeeded"
                ]
        return 0

    async def run_task(self, task: JSON) -> bool:
        await self.kernel.send("TaskStarted", task=task["name"])
        base = self.me["llm"].get("temperature")
        temperature = float(base) if base is not None else 0.3
        outcome = await self.attempt(task, temperature)
        if not outcome.ok and outcome.retry:
            await self.kernel.send(
                "EmitObservation",
                message=f"task {task['name']} failed ({outcome.text[:200]}); "
                "retrying once at a lower temperature",
            )
            outcome = await self.attempt(task, round(temperature / 2, 2))
        if outcome.ok:
            await self.kernel.send("TaskCompleted", task=task["name"], summary=outcome.text)
        else:
            await self.kernel.send("TaskFailed", task=task["name"], error=outcome.text)
        return outcome.ok

    async def attempt(self, task: JSON, temperature: float) -> TaskOutcome:
        if not self.me["llm"].get("available"):
            return TaskOutcome(False, "this agent has no llm:complete capability", retry=False)
        messages: list[JSON] = [
            {"role": "system", "content": system_prompt(self.me)},
            {"role": "user", "content": task_prompt(task, self.me.get("handoff") or [])},
        ]
        tools = self.me["tools"]
        for _ in range(self.max_turns):
            turn = self._turns[task["name"]] = self._turns.get(task["name"], 0) + 1
            try:
                reply = await self.kernel.complete(
                    {
                        "messages": messages,
                        "tools": tools,
                        "task": task["name"],
                        "turn": turn,
                        "temperature": temperature,
                    }
                )
            except KernelError as err:
                return TaskOutcome(
                    False, f"LLM call refused: {err}", retry=err.reason not in NOT_RETRIED
                )
            completion = reply["completion"]
            messages.append(
                {
                    "role": "assistant",
                    "content": completion.get("content") or "",
                    "tool_calls": completion.get("tool_calls") or [],
                }
            )
            calls = completion.get("tool_calls") or []
            if completion.get("refusal"):
                return TaskOutcome(False, f"the model refused: {completion['refusal']}")
            if not calls:
                messages.append(
                    {
                        "role": "user",
                        "content": "Continue with the task using the tools. "
                        "When it is done, call finish_task.",
                    }
                )
                continue
            for call in calls:
                if call["name"] == "finish_task":
                    args = call.get("arguments") or {}
                    summary = str(args.get("summary") or "").strip() or "(no summary)"
                    return TaskOutcome(args.get("status") == "succeeded", summary)
                result = await self.use_tool(call)
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        return TaskOutcome(False, f"no finish_task after {self.max_turns} turns")

    async def use_tool(self, call: JSON) -> str:
        if call["name"] == "spawn_agent":
            status, body = await self.kernel.spawn(call.get("arguments") or {})
        else:
            name = str(call["name"])
            # fs_read is the kernel's fs.read; an MCP tool (mcp__<server>__<tool>) keeps its name.
            name = name if name.startswith(MCP_PREFIX) else name.replace("_", ".", 1)
            status, body = await self.kernel.tool(name, call.get("arguments") or {})
        if status >= 400:
            text = json.dumps({"error": body.get("error"), "message": body.get("message")})
        else:
            text = json.dumps(body)
        return text[:MAX_TOOL_RESULT]


async def run(addr: str) -> int:
    kernel = KernelClient(addr)
    try:
        await kernel.wait_ready()
        return await Executor(kernel).run()
    except (TimeoutError, KernelError) as err:
        print(f"toka agent: {err}", file=sys.stderr, flush=True)
        return 2
    finally:
        await kernel.aclose()


async def run_until_terminated(addr: str) -> int:
    """`run`, ended by SIGTERM. The agent is PID 1 in its container, which ignores a signal
    it has no handler for: without this the pod would wait out its whole grace period."""
    me = asyncio.current_task()
    assert me is not None
    terminated = asyncio.Event()

    def terminate() -> None:
        terminated.set()
        me.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await run(addr)
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        me.uncancel()
        print("toka agent: terminated (SIGTERM)", file=sys.stderr, flush=True)
        return TERMINATED
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main() -> int:
    configure()
    return asyncio.run(run_until_terminated(os.environ.get(ADDR_ENV, DEFAULT_ADDR)))
