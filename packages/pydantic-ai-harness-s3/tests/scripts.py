"""Scripted StepStore sequences, shared by the differential suite, the race workers and the benchmark."""

from __future__ import annotations as _annotations

from datetime import UTC, datetime, timedelta

from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, UserPromptPart
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
