"""Sealed history belongs to one creation of a run and is verified where it sits (issue #19, items 5 and 7)."""

from __future__ import annotations as _annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic_graph import End

from pydantic_graph_s3 import CorruptObjectError, RunStore
from pydantic_graph_s3.layout import decode_head, segment_key

from .conftest import S3Bucket
from .test_long_runs import PAD, Pad, PadState, keys, pad_graph, step_fresh

pytestmark = pytest.mark.anyio


async def _run_to_end(s3: S3Bucket, run_id: str) -> None:
    while not isinstance(await step_fresh(s3, run_id), End):
        pass


@pytest.mark.parametrize('recreate', ['import', 'fork'])
async def test_a_run_created_again_never_meets_the_old_runs_segments(
    s3: S3Bucket, tmp_path: Path, recreate: str
) -> None:
    """A delete cut short after its head leaves the segments; the run created again under the same id (from the
    same file, or forked from the same source) must not take them for its own."""
    store = RunStore(s3.bucket, 'runs/', **s3.options())
    await pad_graph.initialize(Pad(), state=PadState(14, 'x' * PAD), persistence=s3.persistence('source'))
    for _ in range(4):
        await step_fresh(s3, 'source')
    await store.export_run('source', tmp_path / 'source.json')
    at = (await store.history('source', pad_graph)).snapshots[-1].id

    async def create() -> None:
        if recreate == 'import':
            await store.import_run(tmp_path / 'source.json', 'again', pad_graph)
        else:
            await store.fork_run('source', at=at, new_run_id='again', graph=pad_graph)

    await create()
    await _run_to_end(s3, 'again')
    old_segments = [k for k in await keys(s3) if k.startswith('runs/again~')]
    assert len(old_segments) >= 3
    await s3.raw.delete_object(Bucket=s3.bucket, Key='runs/again.json')  # the delete dies after the head

    await create()
    await _run_to_end(s3, 'again')
    head = decode_head((await s3.get('runs/again.json'))[0])
    assert head.segment_id is not None and not any(head.segment_id in k for k in old_segments)
    history = (await store.history('again', pad_graph)).snapshots
    assert [row.state['counter'] for row in history] == [*range(14, -1, -1), 0]


def _swap_1_and_2(bodies: dict[int, bytes]) -> None:
    bodies[1], bodies[2] = bodies[2], bodies[1]


def _reverse_2(bodies: dict[int, bytes]) -> None:
    bodies[2] = json.dumps(json.loads(bodies[2])[::-1], indent=2).encode()


def _truncate_2(bodies: dict[int, bytes]) -> None:
    bodies[2] = json.dumps(json.loads(bodies[2])[:-1], indent=2).encode()


def _end_in_2(bodies: dict[int, bytes]) -> None:
    items = json.loads(bodies[2])
    items[-1] = {
        'state': items[-1]['state'],
        'result': {'data': 0},
        'ts': '2026-01-01T00:00:00Z',
        'kind': 'end',
        'id': 'e',
    }
    bodies[2] = json.dumps(items, indent=2).encode()


TAMPERS: dict[str, Callable[[dict[int, bytes]], None]] = {
    'swapped': _swap_1_and_2,
    'reversed': _reverse_2,
    'truncated': _truncate_2,
    'end-inside': _end_in_2,
}


async def _sealed_run(s3: S3Bucket, run_id: str) -> dict[int, bytes]:
    await pad_graph.run(Pad(), state=PadState(12, 'x' * PAD), persistence=s3.persistence(run_id))
    head = decode_head((await s3.get(f'runs/{run_id}.json'))[0])
    assert head.segment_id is not None and head.sealed_segments >= 3
    return {
        seq: (await s3.get(segment_key(f'runs/{run_id}.json', head.segment_id, seq)))[0]
        for seq in range(1, head.sealed_segments + 1)
    }


async def _assert_refused(s3: S3Bucket, run_id: str, tmp_path: Path) -> None:
    fresh = s3.persistence(run_id)
    fresh.set_graph_types(pad_graph)
    with pytest.raises(CorruptObjectError):
        await fresh.load_all()
    with pytest.raises(CorruptObjectError):
        await RunStore(s3.bucket, 'runs/', **s3.options()).export_run(run_id, tmp_path / f'{run_id}.json')


@pytest.mark.parametrize('tamper', list(TAMPERS))
async def test_a_segment_out_of_its_place_is_corrupt(s3: S3Bucket, tmp_path: Path, tamper: str) -> None:
    bodies = await _sealed_run(s3, 'tampered')
    head = decode_head((await s3.get('runs/tampered.json'))[0])
    assert head.segment_id is not None
    TAMPERS[tamper](bodies)
    for seq, body in bodies.items():
        await s3.put(segment_key('runs/tampered.json', head.segment_id, seq), body)
    await _assert_refused(s3, 'tampered', tmp_path)


async def test_a_segment_of_another_run_is_corrupt(s3: S3Bucket, tmp_path: Path) -> None:
    """Same count, unique ids: only the chain the head records tells that it is not this run's."""
    ours, theirs = await _sealed_run(s3, 'ours'), await _sealed_run(s3, 'theirs')
    head = decode_head((await s3.get('runs/ours.json'))[0])
    assert head.segment_id is not None and len(json.loads(ours[1])) == len(json.loads(theirs[1]))
    await s3.put(segment_key('runs/ours.json', head.segment_id, 1), theirs[1])
    await _assert_refused(s3, 'ours', tmp_path)


async def test_a_head_without_a_chain_stays_readable_and_is_checked_for_what_it_has(
    s3: S3Bucket, tmp_path: Path
) -> None:
    """Heads sealed before the chain was recorded have none: they are read, and keep none when sealed again."""
    bodies = await _sealed_run(s3, 'old')
    body = (await s3.get('runs/old.json'))[0]
    unchained, count = re.subn(rb'"segment_chain": "[0-9a-f]{64}", ', b'', body)
    assert count == 1
    await s3.put('runs/old.json', unchained)
    fresh = s3.persistence('old')
    fresh.set_graph_types(pad_graph)
    assert [s.state.counter for s in await fresh.load_all()] == [*range(12, -1, -1), 0]

    head = decode_head(unchained)
    assert head.segment_id is not None and head.chain is None
    _end_in_2(bodies)
    await s3.put(segment_key('runs/old.json', head.segment_id, 2), bodies[2])
    await _assert_refused(s3, 'old', tmp_path)
