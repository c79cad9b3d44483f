"""What an agent step costs in S3 requests and bytes with `S3StepStore`, and what reading a long run costs.

Run: `.venv-ai/bin/python packages/pydantic-ai-harness-s3/benchmarks/bench_steps.py [--tool-calls N] [--events N]`

Against the embedded S3 (moto's server on loopback), it prints:
- an agent run (pydantic-ai `Agent`, scripted `FunctionModel`, `StepPersistence(store=S3StepStore(...))`) making N
  sequential tool calls: requests and bytes per model request, per tool call, and for the run's start and end;
- a run of 1,000 events (and a snapshot every 10): `latest_snapshot` and `list_events` from a fresh store, and what
  one more append costs at that length compared with the first appends;
- custom (non-StepPersistence) idempotency keys past the head's window: a new key, a replay of one that only its
  marker remembers, and that replay from a fresh store.
Request counts are exact; times are wall-clock on this machine, for orientation only.
"""

from __future__ import annotations as _annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from embedded_bucket import embedded_bucket
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai_harness.step_persistence import StepPersistence

from pydantic_ai_harness_s3 import S3StepStore
from pydantic_ai_harness_s3.step_store import KEY_WINDOW

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from scripts import event, snapshot

PHASE_OF_KIND = {'run_started': 'run', 'run_completed': 'run', 'run_failed': 'run'}


class MeteredStore(S3StepStore):
    """An S3StepStore that books each call's requests and bytes to the phase of the agent run it belongs to."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.booked: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # calls, requests, bytes

    async def _metered(self, phase: str, call: Any) -> Any:
        before = self.stats.as_dict()
        result = await call
        after = self.stats.as_dict()
        entry = self.booked[phase]
        entry[0] += 1
        entry[1] += after['requests'] - before['requests']
        entry[2] += after['bytes_sent'] + after['bytes_received'] - before['bytes_sent'] - before['bytes_received']
        return result

    async def register_run(self, record: Any) -> None:
        await self._metered('run', super().register_run(record))

    async def get_run(self, *, run_id: str) -> Any:
        return await self._metered('run', super().get_run(run_id=run_id))

    async def append_event(self, event: Any) -> None:
        phase = PHASE_OF_KIND.get(event.kind, 'tool call' if event.kind.startswith('tool_call') else 'model request')
        await self._metered(phase, super().append_event(event))

    async def save_snapshot(self, snapshot: Any) -> None:
        await self._metered('model request', super().save_snapshot(snapshot))

    async def record_tool_effect(self, record: Any) -> None:
        await self._metered('tool call', super().record_tool_effect(record))

    async def get_tool_effect(self, *, run_id: str, tool_call_id: str) -> Any:
        return await self._metered('tool call', super().get_tool_effect(run_id=run_id, tool_call_id=tool_call_id))


def agent_with_tool_calls(store: S3StepStore, tool_calls: int) -> Agent[None, str]:
    def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        done = sum(isinstance(p, ToolReturnPart) for m in messages for p in m.parts)
        if done < tool_calls:
            return ModelResponse(parts=[ToolCallPart('step', {'n': done}, tool_call_id=f'call-{done}')])
        return ModelResponse(parts=[TextPart('done')])

    agent = Agent(FunctionModel(scripted), capabilities=[StepPersistence(store=store)])

    @agent.tool_plain
    def step(n: int) -> str:
        return f'step {n} done'

    return agent


async def bench_agent(options: dict[str, Any], tool_calls: int) -> None:
    store = MeteredStore(**options)
    started = time.perf_counter()
    result = await agent_with_tool_calls(store, tool_calls).run('go')
    elapsed = time.perf_counter() - started
    assert result.output == 'done'
    model_requests = tool_calls + 1
    print(f'agent run: {model_requests} model requests, {tool_calls} tool calls, {elapsed:.2f}s wall')
    for phase, per in [('model request', model_requests), ('tool call', tool_calls), ('run', 1)]:
        calls, requests, size = store.booked[phase]
        print(
            f'  per {phase:<13}: {requests / per:5.2f} requests, {size / per:8.0f} bytes  '
            f'({calls} store calls, {requests} requests in all)'
        )
    total = store.stats.as_dict()
    counts = f'{total["gets"]} GET, {total["puts"]} PUT, {total["lists"]} LIST'
    print(f'  whole run        : {total["requests"]} requests ({counts})')


async def bench_long_run(options: dict[str, Any], events: int) -> None:
    writer = S3StepStore(**options)
    await writer.save_snapshot(snapshot('long', 1, key='0:0:complete'))

    async def one_append(index: int) -> tuple[int, int]:
        before = writer.stats.as_dict()
        await writer.append_event(event('long', index, key=f'{index}:0:model_request_started:'))
        after = writer.stats.as_dict()
        return after['requests'] - before['requests'], after['bytes_sent'] - before['bytes_sent']

    first = [await one_append(i) for i in range(3)]
    for i in range(3, events):
        await writer.append_event(event('long', i, key=f'{i}:0:model_request_started:'))
        if i % 10 == 0:
            await writer.save_snapshot(snapshot('long', 3, key=f'{i}:{i}:complete'))
    last = [await one_append(i) for i in range(events, events + 3)]
    print(f'run of {events + 3} events and {events // 10} snapshots (30 messages each):')
    print(f'  append at the start : {first[0][0]} request(s), {max(b for _, b in first)} bytes sent')
    print(f'  append at the end   : {last[0][0]} request(s), {max(b for _, b in last)} bytes sent')
    for name in ['latest_snapshot', 'list_events']:
        reader = S3StepStore(**options)
        started = time.perf_counter()
        answer: Any = await getattr(reader, name)(run_id='long')
        elapsed = time.perf_counter() - started
        stats = reader.stats.as_dict()
        size = len(answer) if isinstance(answer, list) else 1
        print(
            f'  {name:<20}: {stats["requests"]} requests, {stats["bytes_received"]} bytes received, '
            f'{elapsed * 1000:.0f} ms wall ({size} item(s))'
        )


async def bench_custom_keys(options: dict[str, Any]) -> None:
    writer = S3StepStore(**options)
    for i in range(2 * KEY_WINDOW):
        await writer.append_event(event('custom', i, key=f'custom-{i}'))

    async def cost(store: S3StepStore, key: str) -> str:
        before = store.stats.as_dict()
        await store.append_event(event('custom', 0, key=key))
        after = store.stats.as_dict()
        gets, puts = after['gets'] - before['gets'], after['puts'] - before['puts']
        return f'{after["requests"] - before["requests"]} request(s) ({gets} GET, {puts} PUT)'

    print(f'custom idempotency keys, {2 * KEY_WINDOW} of them (the head remembers {KEY_WINDOW}):')
    print(f'  a new custom key              : {await cost(writer, "custom-new")}')
    print(f'  replay of the oldest one      : {await cost(writer, "custom-0")}')
    print(f'  that replay from a fresh store: {await cost(S3StepStore(**options), "custom-1")}')


async def main(arguments: argparse.Namespace) -> None:
    with embedded_bucket() as options:
        await bench_agent(options, arguments.tool_calls)
        await bench_long_run(options, arguments.events)
        await bench_custom_keys(options)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tool-calls', type=int, default=10)
    parser.add_argument('--events', type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
