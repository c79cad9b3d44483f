"""Several processes race on one run through their own S3StepStores: nothing is lost, duplicated or reordered."""

from __future__ import annotations as _annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Bucket
from race_worker import CUSTOM_KEYS, OWN_EVENTS, SHARED_EVENTS, TOOL_CALLS, WORKERS_REPLAYING

from pydantic_ai_harness_s3._head import KEY_WINDOW, SEGMENT_ENTRIES, _EventEntry, _SnapshotEntry

pytestmark = pytest.mark.anyio

WORKERS = 3
WORKER = Path(__file__).with_name('race_worker.py')


def race(s3: Bucket, scenario: str, tmp_path: Path) -> None:
    go = tmp_path / f'go-{scenario}'
    env = {
        **os.environ,
        'AWS_ACCESS_KEY_ID': s3.endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': s3.endpoint.secret_key,
        'AWS_DEFAULT_REGION': s3.endpoint.region,
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, s3.endpoint.url, s3.bucket, str(n), str(go)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WORKERS)
    ]
    go.touch()
    for worker in workers:
        _, stderr = worker.communicate(timeout=280)
        assert worker.returncode == 0, stderr


async def test_racing_processes_store_each_keyed_event_once_in_one_gapless_order(s3: Bucket, tmp_path: Path) -> None:
    race(s3, 'events', tmp_path)
    reader = s3.step_store(prefix='race/')
    events = await reader.list_events(run_id='r')
    keys = [e.idempotency_key for e in events]
    own = {f'w{w}-{i}' for w in range(WORKERS) for i in range(0, SHARED_EVENTS, 3)}
    assert len(keys) == len(set(keys)) == SHARED_EVENTS + len(own)  # each key once
    assert set(keys) == {f'{i}:0:model_request_started:' for i in range(SHARED_EVENTS)} | own
    assert len(own) == WORKERS * OWN_EVENTS
    # Each worker's own events are in the order it appended them.
    for w in range(WORKERS):
        mine = [k for k in keys if k and k.startswith(f'w{w}-')]
        assert mine == [f'w{w}-{i}' for i in range(0, SHARED_EVENTS, 3)]
    # Sequence numbers: gapless, and the same order for every reader.
    log = await reader._log('r')
    assert [e.seq for e in log if isinstance(e, _EventEntry)] == list(range(len(events)))
    snapshots = [e for e in log if isinstance(e, _SnapshotEntry)]
    assert [e.seq for e in snapshots] == list(range(len(snapshots)))
    assert sorted(e.idempotency_key or '' for e in snapshots) == sorted(f'{i}:{i}:complete' for i in (0, 10, 20))
    assert await s3.step_store(prefix='race/').list_events(run_id='r') == events
    assert len(events) > SEGMENT_ENTRIES  # segments were sealed under contention


async def test_racing_processes_replaying_old_custom_keys_store_each_once(s3: Bucket, tmp_path: Path) -> None:
    """Custom keys far out of the head's window, written by every worker at other times: each stored once, gapless."""
    assert WORKERS == WORKERS_REPLAYING
    race(s3, 'custom', tmp_path)
    reader = s3.step_store(prefix='race/')
    log = await reader._log('r')
    events = [e for e in log if isinstance(e, _EventEntry)]
    snapshots = [e for e in log if isinstance(e, _SnapshotEntry)]
    assert sorted(e.event.idempotency_key or '' for e in events) == sorted(f'custom-{i}' for i in range(CUSTOM_KEYS))
    assert sorted(e.idempotency_key or '' for e in snapshots) == sorted(
        f'custom-snapshot-{i}' for i in range(0, CUSTOM_KEYS, 2)
    )
    assert [e.seq for e in events] == list(range(CUSTOM_KEYS))
    assert [e.seq for e in snapshots] == list(range(len(snapshots)))
    # Uploads of snapshots another worker had saved first were removed: one object per stored snapshot.
    assert len(await s3.keys('race/steps/r/snapshots/')) == len(snapshots)
    markers = await s3.keys('race/steps/r/keys/')
    assert len([m for m in markers if '/keys/events/' in m]) == CUSTOM_KEYS - KEY_WINDOW
    assert len([m for m in markers if '/keys/snapshots/' in m]) == len(snapshots) - KEY_WINDOW


async def test_replayed_starts_racing_a_finish_never_reopen_the_call(s3: Bucket, tmp_path: Path) -> None:
    race(s3, 'effects', tmp_path)
    reader = s3.step_store(prefix='race/')
    assert await reader.list_unresolved_tool_effects(run_id='r') == []
    for call in range(TOOL_CALLS):
        record = await reader.get_tool_effect(run_id='r', tool_call_id=f'call-{call}')
        assert record is not None and record.status == 'completed'
        assert record.effect_summary == 'finished'
