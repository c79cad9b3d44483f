"""What a snapshot of a growing conversation costs: S3StepStore's message-once layout, the inline layout it
replaces, and the harness's FileStepStore; and what `list_runs` costs at 1,000 runs.

Run: `.venv-ai/bin/python packages/pydantic-ai-harness-s3/benchmarks/bench_history.py [--steps N] [--runs N]`

The conversation grows by one tool call and one 10 KB tool return per step (`tests/scripts.tool_conversation`),
and StepPersistence saves a snapshot of the whole history at every step. Against the embedded S3 (moto's server
on loopback), for steps 10, 100 and 1,000 it prints, per `save_snapshot` and per `latest_snapshot` from a fresh
store: requests and bytes. The inline layout (0.1: the whole snapshot in one object, then the head) is computed
from the size of that object; FileStepStore's figures are the bytes of the files it writes and reads. Request
counts and bytes are exact.
"""

from __future__ import annotations as _annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from embedded_bucket import embedded_bucket
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai_harness.step_persistence import ContinuableSnapshot, FileStepStore, RunRecord

from pydantic_ai_harness_s3 import S3StepStore
from pydantic_ai_harness_s3._history import LEGACY_SNAPSHOT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from scripts import at, conversation_snapshot, tool_conversation

SAMPLES = (10, 100, 120, 1000)


async def spent(store: S3StepStore, call: Any) -> tuple[Any, int, int, int]:
    """`call`'s result, and the requests, bytes sent and bytes received it cost."""
    before = store.stats.as_dict()
    result = await call
    after = store.stats.as_dict()
    return result, *(after[name] - before[name] for name in ('requests', 'bytes_sent', 'bytes_received'))


def kb(size: float) -> str:
    return f'{size / 1000:,.1f} KB'


class Conversation:
    """`tool_conversation(steps)` built once, and its snapshot at each step (equal to `conversation_snapshot`)."""

    def __init__(self, steps: int) -> None:
        self.messages = tool_conversation(steps)
        self.sizes = [len(ModelMessagesTypeAdapter.dump_json([message])) - 2 for message in self.messages]

    def at(self, step: int) -> ContinuableSnapshot:
        return replace(
            conversation_snapshot('r', 0),
            step_index=step,
            messages=self.messages[: 2 * step + 1],
            timestamp=at(2000 + step),
            idempotency_key=f'{step}:{step}:complete',
        )

    def new_bytes(self, step: int) -> int:
        """The bytes of the messages step `step` adds to the history (two messages and their commas)."""
        return sum(self.sizes[2 * step - 1 : 2 * step + 1]) + 2


async def bench_s3(options: dict[str, Any], steps: int) -> None:
    conversation = Conversation(steps)
    writer = S3StepStore(**options)
    sent_total = new_total = over = worst = 0
    samples = [step for step in SAMPLES if step <= steps]
    print(f'S3StepStore, message-once (one 10 KB tool return a step, {steps} steps):')
    print('  step | new messages | save: requests, sent        | fresh latest_snapshot: requests, received | history')
    for step in range(1, steps + 1):
        new = conversation.new_bytes(step)
        _, requests, sent, _ = await spent(writer, writer.save_snapshot(conversation.at(step)))
        sent_total, new_total = sent_total + sent, new_total + new
        over += sent > 3 * new + 32_000
        worst = max(worst, sent)
        if step in samples:
            reader = S3StepStore(**options)
            latest, reads, _, received = await spent(reader, reader.latest_snapshot(run_id='r'))
            history = len(ModelMessagesTypeAdapter.dump_json(latest.messages))
            assert latest == conversation.at(step)
            print(
                f'  {step:>4} | {kb(new):>12} | {requests} requests, {kb(sent):>10} ({sent / new:.1f}x new) '
                f'| {reads:>2} requests, {kb(received):>11} ({received / history:.2f}x history) | {kb(history)}'
            )
    print(
        f'  over the run: {kb(sent_total)} sent for {kb(new_total)} of new messages ({sent_total / new_total:.2f}x); '
        f'{over} of {steps} saves sent more than 3x their new messages + 32 KB (chunk merges), the largest {kb(worst)}'
    )


def bench_inline_and_file(steps: int) -> None:
    print('The inline layout (0.1; computed: the snapshot object + a head of about 2 KB):')
    for step in (s for s in SAMPLES if s <= steps):
        size = len(LEGACY_SNAPSHOT.dump_json(conversation_snapshot('r', step)))
        print(f'  {step:>4} | save: 2 requests, {kb(size + 2000):>10} | latest_snapshot: 2 requests, {kb(size + 2000)}')
    print("FileStepStore (the harness's; bytes of the files written by one save, and read by latest_snapshot):")
    for step in (s for s in SAMPLES if s <= steps):
        with tempfile.TemporaryDirectory() as folder:
            store = FileStepStore(Path(folder), media_store=None)
            asyncio.run(store.save_snapshot(conversation_snapshot('r', step)))
            written = sum(path.stat().st_size for path in Path(folder).rglob('*.json*'))
        print(f'  {step:>4} | save: 1 file, {kb(written):>10} | latest_snapshot: 1 file, {kb(written)}')


async def bench_list_runs(options: dict[str, Any], runs: int) -> None:
    store = S3StepStore(**{**options, 'prefix': 'runs-bench/'})
    gate = asyncio.Semaphore(32)

    async def register(n: int) -> None:
        async with gate:
            await store.register_run(RunRecord(run_id=f'run-{n:05d}', conversation_id=f'c{n % 10}'))

    await asyncio.gather(*(register(n) for n in range(runs)))
    print(f'list_runs at {runs} runs, each from a fresh store:')
    for label in ('first (no memo: what every call cost before)', 'then (the memo)'):
        reader = S3StepStore(**{**options, 'prefix': 'runs-bench/'})
        found, requests, sent, received = await spent(reader, reader.list_runs())
        assert len(found) == runs
        print(
            f'  {label:<45}: {requests} requests ({reader.stats.lists} LIST), {kb(received)} received, {kb(sent)} sent'
        )


async def main(arguments: argparse.Namespace) -> None:
    with embedded_bucket() as options:
        await bench_s3(options, arguments.steps)
        await bench_list_runs(options, arguments.runs)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--runs', type=int, default=1000)
    arguments = parser.parse_args()
    bench_inline_and_file(arguments.steps)
    asyncio.run(main(arguments))
