"""Saves snapshots of a growing conversation, as its own process, for test_history_kill.

`python history_worker.py save|continue ENDPOINT_URL BUCKET RUN_ID MARKER_DIR FIRST_STEP LAST_STEP [HANG_ON]`

`save` saves `conversation_snapshot(RUN_ID, step)` for FIRST_STEP..LAST_STEP. With HANG_ON (`chunk` or
`snapshot`), the save of LAST_STEP signals MARKER_DIR/hanging and hangs right after creating its chunk (or its
snapshot object), before its head write, for the test to SIGKILL it there. `continue` first reads the run's
`latest_snapshot`, prints its step, and checks it is exactly what was saved, then saves the steps after it.
"""

from __future__ import annotations as _annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from scripts import conversation_snapshot

from pydantic_ai_harness_s3 import ClientSettings, S3StepStore
from pydantic_s3_cas import CasObject


def hang_after_creating(part: str, markers: Path) -> None:
    """Make the next create of a `part` object (`chunk`: `chunks/`, `snapshot`: `snapshots/`) signal, then hang."""
    create = CasObject._create

    async def create_then_hang(self: CasObject[Any], attempt: int, key: str, body: bytes) -> None:
        await create(self, attempt, key, body)
        if f'/{part}s/' in key:
            (markers / 'hanging').touch()
            await asyncio.sleep(3600)  # killed here

    CasObject._create = create_then_hang  # type: ignore[method-assign]


async def main(mode: str, url: str, bucket: str, run_id: str, markers: Path, first: int, last: int, hang: str) -> None:
    store = S3StepStore(bucket=bucket, prefix='agents/', client_settings=ClientSettings(endpoint_url=url))
    if mode == 'continue':
        latest = await store.latest_snapshot(run_id=run_id)
        assert latest is not None and latest == conversation_snapshot(run_id, latest.step_index), 'not as saved'
        print(f'continued from step {latest.step_index}', flush=True)
        first = latest.step_index + 1
    for step in range(first, last + 1):
        if hang and step == last:
            hang_after_creating(hang, markers)
        await store.save_snapshot(conversation_snapshot(run_id, step))


if __name__ == '__main__':
    mode, url, bucket, run_id, markers, first, last = sys.argv[1:8]
    hang = sys.argv[8] if len(sys.argv) > 8 else ''
    asyncio.run(main(mode, url, bucket, run_id, Path(markers), int(first), int(last), hang))
