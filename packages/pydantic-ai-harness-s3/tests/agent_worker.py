"""A pydantic-ai Agent with `StepPersistence(store=S3StepStore(...))`, run as its own process by test_agent_kill.

`python agent_worker.py start|continue ENDPOINT_URL BUCKET RUN_ID MARKER_DIR`

The scripted model (FunctionModel: no LLM, no network) calls `lookup`, then `slow_write`, then answers. In `start`,
`slow_write` signals MARKER_DIR/in-slow-write and hangs, for the test to SIGKILL the process mid-tool-call. In
`continue`, a fresh process reads the run's `latest_snapshot` and continues it under a new run id.
"""

from __future__ import annotations as _annotations

import asyncio
import sys
from pathlib import Path

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai_harness.step_persistence import StepPersistence

from pydantic_ai_harness_s3 import ClientSettings, S3StepStore


def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    returned = {
        part.tool_name: part.content
        for message in messages
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    }
    if 'lookup' not in returned:
        return ModelResponse(parts=[ToolCallPart('lookup', {'key': 'answer'}, tool_call_id='call-lookup')])
    if 'slow_write' not in returned:
        return ModelResponse(
            parts=[ToolCallPart('slow_write', {'value': returned['lookup']}, tool_call_id='call-write')]
        )
    return ModelResponse(parts=[TextPart(f'done: {returned["slow_write"]}')])


def build(store: S3StepStore, run_id: str, markers: Path, *, hang: bool) -> Agent[None, str]:
    agent = Agent(
        FunctionModel(scripted), capabilities=[StepPersistence(store=store, run_id=run_id, capture_frontier=True)]
    )

    @agent.tool_plain
    def lookup(key: str) -> str:
        return f'{key}=42'

    @agent.tool_plain
    async def slow_write(value: str) -> str:
        (markers / 'in-slow-write').touch()
        if hang:
            await asyncio.sleep(3600)  # killed here
        return f'wrote {value}'

    return agent


async def main(mode: str, url: str, bucket: str, run_id: str, markers: Path) -> None:
    store = S3StepStore(bucket=bucket, prefix='agents/', client_settings=ClientSettings(endpoint_url=url))
    if mode == 'start':
        await build(store, run_id, markers, hang=True).run('store the answer')
        return
    snapshot = await store.latest_snapshot(run_id=run_id)
    assert snapshot is not None, 'no complete snapshot to continue from'
    unresolved = [record.tool_call_id for record in await store.list_unresolved_tool_effects(run_id=run_id)]
    result = await build(store, f'{run_id}-continued', markers, hang=False).run(message_history=snapshot.messages)
    print(f'unresolved={",".join(unresolved)}')
    print(f'output={result.output}')


if __name__ == '__main__':
    mode, url, bucket, run_id, markers = sys.argv[1:6]
    asyncio.run(main(mode, url, bucket, run_id, Path(markers)))
