"""RunStore: paginated listing, conditional deletes, create-only imports, pruning, and what they cost."""

from __future__ import annotations as _annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from pydantic_graph_s3 import ObjectChangedError, ObjectExistsError, ObjectNotFoundError, RunStore
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph

from .conftest import FAST_RETRY, S3Bucket

pytestmark = pytest.mark.anyio


def store(s3: S3Bucket, **options: object) -> RunStore:
    return RunStore(s3.bucket, 'runs/', session=s3.session, client_settings=s3.settings, retry=FAST_RETRY, **options)  # type: ignore[arg-type]


async def start(s3: S3Bucket, run_id: str) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(1), persistence=s3.persistence(run_id))


async def test_listing_follows_pages(s3: S3Bucket) -> None:
    for index in range(5):
        await start(s3, f'run-{index}')
    runs = store(s3, page_size=2)
    listed = [run async for run in runs.list_runs(decode=False)]
    assert [run.run_id for run in listed] == [f'run-{index}' for index in range(5)]
    assert (runs.request_stats.lists, runs.request_stats.gets) == (3, 0)
    assert all(run.snapshots is None for run in listed)

    decoded = [run async for run in runs.list_runs()]
    assert [(run.snapshots, run.last_status, run.ended) for run in decoded] == [(1, 'created', False)] * 5
    assert (runs.request_stats.lists, runs.request_stats.gets) == (6, 5)


async def test_persistence_is_the_runs_own(s3: S3Bucket) -> None:
    await start(s3, 'mine')
    persistence = store(s3).persistence('mine', count_down_graph)
    assert persistence.key == 'runs/mine.json'
    assert [s.state for s in await persistence.load_all()] == [CountDownState(1)]


async def test_delete_refuses_a_run_written_since_it_was_read(s3: S3Bucket) -> None:
    await start(s3, 'busy')
    runs = store(s3)
    seen = await runs.get_run('busy')
    async with count_down_graph.iter_from_persistence(s3.persistence('busy')) as run:
        await run.next()

    with pytest.raises(ObjectChangedError, match='changed since it was read'):
        await runs.delete_run('busy', etag=seen.etag)
    assert (await runs.get_run('busy')).snapshots == 2

    await runs.delete_run('busy', etag=(await runs.get_run('busy')).etag)
    with pytest.raises(ObjectNotFoundError):
        await runs.get_run('busy')
    with pytest.raises(ObjectNotFoundError):
        await runs.delete_run('busy', etag=seen.etag)


async def test_concurrent_imports_create_the_run_once(s3: S3Bucket, tmp_path: Path) -> None:
    await start(s3, 'source')
    path = tmp_path / 'run.json'
    await store(s3).export_run('source', path)
    outcomes: list[str] = []

    async def import_once() -> None:
        try:
            await store(s3).import_run(path, 'copy', count_down_graph)
            outcomes.append('created')
        except ObjectExistsError:
            outcomes.append('exists')

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(import_once)
    assert sorted(outcomes) == ['created'] + ['exists'] * 5
    assert (await s3.get('runs/copy.json'))[0] == path.read_bytes()


async def test_prune_needs_an_aware_date_and_keeps_recent_runs(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(0), persistence=s3.persistence('ended'))
    runs = store(s3)
    with pytest.raises(ValueError, match='timezone-aware'):
        [o async for o in runs.prune(ended_before=datetime(2999, 1, 1))]
    recent = [o async for o in runs.prune(ended_before=datetime.now(UTC) - timedelta(hours=1))]
    assert [(o.run.run_id, o.deleted, o.reason) for o in recent] == [('ended', False, 'ended too recently')]
    pruned = [o async for o in runs.prune(ended_before=datetime.now(UTC) + timedelta(hours=1))]
    assert [(o.run.run_id, o.deleted) for o in pruned] == [('ended', True)]
    assert runs.request_stats.deletes == 1
