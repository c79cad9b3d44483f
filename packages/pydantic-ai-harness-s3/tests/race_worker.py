"""One racing process: `python race_worker.py SCENARIO ENDPOINT_URL BUCKET WORKER GO_FILE`.

Waits for GO_FILE to appear (so all workers start together), then writes the scenario's sequence through its own
S3StepStore (own client, own ETag cache), as a separate worker process on another machine would.
"""

from __future__ import annotations as _annotations

import asyncio
import sys
import time
from pathlib import Path

from pydantic_ai_harness.step_persistence import ToolEffectRecord

from pydantic_ai_harness_s3 import ClientSettings, RetryPolicy, S3StepStore

sys.path.insert(0, str(Path(__file__).parent))
from scripts import at, event, snapshot

SHARED_EVENTS = 27
OWN_EVENTS = len(range(0, SHARED_EVENTS, 3))  # every third shared index
TOOL_CALLS = 6
REPLAYED_STARTS = 8
CUSTOM_KEYS = 150  # more than twice the head's key window
WORKERS_REPLAYING = 3  # how many workers the custom scenario spreads its starting points over
RETRY = RetryPolicy(max_attempts=200, max_elapsed=240.0, initial_backoff=0.005, max_backoff=0.3)


async def main(scenario: str, url: str, bucket: str, worker: int) -> None:
    store = S3StepStore(bucket=bucket, prefix='race/', client_settings=ClientSettings(endpoint_url=url), retry=RETRY)
    if scenario == 'events':
        # Every worker appends the same keyed events (a retried step, racing) and some of its own.
        for i in range(SHARED_EVENTS):
            await store.append_event(event('r', i, key=f'{i}:0:model_request_started:'))
            if i % 3 == 0:
                await store.append_event(event('r', 100 * (worker + 1) + i, key=f'w{worker}-{i}'))
            if i % 10 == 0:
                await store.save_snapshot(snapshot('r', i // 10 + 1, key=f'{i}:{i}:complete'))
    elif scenario == 'custom':
        # Every worker writes the same custom keys, each starting at another point and wrapping around: most
        # keys reach a worker long after another stored them and pushed them out of the head's key window.
        start = worker * CUSTOM_KEYS // WORKERS_REPLAYING
        for i in [*range(start, CUSTOM_KEYS), *range(start)]:
            await store.append_event(event('r', i, key=f'custom-{i}'))
            if i % 2 == 0:
                await store.save_snapshot(snapshot('r', 1, key=f'custom-snapshot-{i}'))
    elif scenario == 'effects':
        # Worker 0 starts and finishes each tool call; the others keep replaying its start (a crashed worker's
        # retry, a durable replay). A start that lands after the finish must not reopen the call.
        for round_ in range(1 if worker == 0 else REPLAYED_STARTS):
            for call in range(TOOL_CALLS):
                tool_call_id = f'call-{call}'
                started = ToolEffectRecord(tool_call_id=tool_call_id, tool_name='t', run_id='r', status='started')
                await store.record_tool_effect(started)
                if worker == 0:
                    finished = ToolEffectRecord(
                        tool_call_id=tool_call_id,
                        tool_name='t',
                        run_id='r',
                        status='completed',
                        ended_at=at(round_),
                        effect_summary='finished',
                    )
                    await store.record_tool_effect(finished)
    else:
        raise SystemExit(f'unknown scenario {scenario!r}')


if __name__ == '__main__':
    scenario, url, bucket, worker, go = sys.argv[1:6]
    deadline = time.monotonic() + 120
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit('no go signal')
        time.sleep(0.01)
    asyncio.run(main(scenario, url, bucket, int(worker)))
