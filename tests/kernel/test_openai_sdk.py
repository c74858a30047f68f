"""A bring-your-own agent using the real `openai` SDK needs no key: the kernel holds it.

The SDK is pointed at the kernel's OpenAI-compatible endpoint with a
placeholder key (the SDK insists on a string; the kernel ignores it) and
the `replay` provider behind the gateway.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.kernel.stack import kernel_stack, replay_file

PLACEHOLDER = "no-key-here"


def recording(tmp: Path) -> Path:
    return replay_file(
        tmp,
        [
            {
                "task": "chat",
                "turn": 1,
                "response": {"content": "Hello from the recording."},
                "usage": {"input_tokens": 12, "output_tokens": 5},
            },
            {
                "task": "chat",
                "turn": 2,
                "response": {"content": "Streamed, word by word."},
                "usage": {"input_tokens": 14, "output_tokens": 6},
            },
        ],
    )


async def test_the_openai_sdk_completes_a_chat_through_the_kernel(tmp_path: Path) -> None:
    async with kernel_stack(tmp_path, ["llm:complete"], recording=recording(tmp_path)) as stack:
        client = openai.AsyncOpenAI(
            base_url=f"{stack.http.base_url}/openai/v1", api_key=PLACEHOLDER, max_retries=0
        )
        chat = await client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "Say hello."}]
        )
        assert chat.choices[0].message.content == "Hello from the recording."
        assert chat.choices[0].finish_reason == "stop"
        assert chat.usage is not None
        assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (12, 5)

        stream = await client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "Stream it."}], stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p for p in pieces if p) == "Streamed, word by word."
        await client.close()
        usage = stack.reporter.run.usage
        assert usage is not None
        assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 26, 11)
        assert PLACEHOLDER not in stack.audit.getvalue()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
async def test_without_llm_complete_the_sdk_gets_a_403(tmp_path: Path, stream: bool) -> None:
    async with kernel_stack(tmp_path, ["fs:read:**"], recording=recording(tmp_path)) as stack:
        client = openai.AsyncOpenAI(
            base_url=f"{stack.http.base_url}/openai/v1", api_key=PLACEHOLDER, max_retries=0
        )
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await client.chat.completions.create(
                model="any", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
        await client.close()
        assert "llm:complete" in str(denied.value)
        assert stack.denials == 1
