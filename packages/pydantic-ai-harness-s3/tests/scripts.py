"""Scripted StepStore sequences, shared by the differential suite, the race workers and the benchmark."""

from __future__ import annotations as _annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai_harness.step_persistence import ContinuableSnapshot, StepEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def history(turns: int) -> list[ModelMessage]:
    """A message history of `turns` request/response pairs, with fixed timestamps so it compares equal."""
    messages: list[ModelMessage] = []
    for turn in range(turns):
        messages.append(ModelRequest(parts=[UserPromptPart(f'question {turn}', timestamp=at(turn))]))
        messages.append(ModelResponse(parts=[TextPart(f'answer {turn}')], timestamp=at(turn + 0.5)))
    return messages


def event(run_id: str, index: int, *, key: str | None = None, step: int = 0) -> StepEvent:
    return StepEvent(
        run_id=run_id,
        kind='model_request_started',
        step_index=step,
        timestamp=at(index),
        metadata={'i': str(index)},
        idempotency_key=key,
    )


def snapshot(run_id: str, turns: int, *, key: str | None, state: str = 'complete') -> ContinuableSnapshot:
    assert state in ('complete', 'interrupted')
    return ContinuableSnapshot(
        run_id=run_id,
        step_index=turns,
        messages=history(turns),
        timestamp=at(1000 + turns),
        state='complete' if state == 'complete' else 'interrupted',
        idempotency_key=key,
    )


def tool_conversation(steps: int, *, return_bytes: int = 10_000) -> list[ModelMessage]:
    """A conversation that grows by one tool call and its `return_bytes` tool return per step (fixed timestamps)."""
    messages: list[ModelMessage] = [ModelRequest(parts=[UserPromptPart('look everything up', timestamp=at(0))])]
    for step in range(steps):
        call = ToolCallPart('lookup', {'page': step}, tool_call_id=f'call-{step}')
        messages.append(ModelResponse(parts=[call], timestamp=at(step + 0.5)))
        text = (f'page {step}: ' * (return_bytes // 8 + 1))[:return_bytes]
        returned = ToolReturnPart('lookup', text, tool_call_id=f'call-{step}', timestamp=at(step + 0.75))
        messages.append(ModelRequest(parts=[returned]))
    return messages


def conversation_snapshot(run_id: str, steps: int, **fields: Any) -> ContinuableSnapshot:
    """The snapshot StepPersistence saves after `steps` steps of `tool_conversation`."""
    return ContinuableSnapshot(
        run_id=run_id,
        step_index=steps,
        messages=tool_conversation(steps),
        timestamp=at(2000 + steps),
        idempotency_key=f'{steps}:{steps}:complete',
        **fields,
    )
