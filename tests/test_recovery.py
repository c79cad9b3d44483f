"""Crash recovery: stale claims are taken over, and a worker whose claim was taken over can no longer write.

Each test plays the crashed or slow worker with a persistence object that is simply abandoned, or paused
inside its node, and the survivor with another instance on its own client, against a real HTTP S3 endpoint.
"""

from __future__ import annotations as _annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.exceptions import GraphNodeStatusError
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot
from pydantic_graph.persistence.file import FileStatePersistence

from pydantic_graph_s3 import ClaimLostError, S3PersistenceError, S3StatePersistence, recover_run
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.serverless import GraphWorker

from .conftest import AGED, FRESH, S3Bucket
from .support.fixtures import new_session

pytestmark = pytest.mark.anyio

# Claims go stale only when a test ages them (`S3Bucket.backdate_claims`), never because the machine is slow: a
# claim that went stale while a test was still using it (a loser's retry coming late) would make a second winner.


def worker(s3: S3Bucket, run_id: str, *, graph: Graph[Any, Any, Any] = count_down_graph, **overrides: Any) -> Any:
    """A persistence with claims on, and a session (client, connection pool) of its own, as another process has."""
    options: dict[str, Any] = {'reclaim_after': FRESH, 'session': new_session(s3.endpoint), **overrides}
    persistence = s3.persistence(run_id, **options)
    persistence.set_graph_types(graph)
    return persistence


async def started_run(s3: S3Bucket, run_id: str, counter: int = 1) -> str:
    node = CountDown()
    await worker(s3, run_id).snapshot_node(CountDownState(counter), node)
    return node.get_snapshot_id()


async def test_a_fresh_claim_is_not_taken_a_stale_one_is(s3: S3Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot_id = await started_run(s3, 'stale-pending')
    crashed = worker(s3, 'stale-pending')
    assert (await crashed.load_next()) is not None  # ...and then the process dies

    assert await worker(s3, 'stale-pending').load_next() is None, 'a fresh claim belongs to its worker'
    # A day passes: for the stored claim, and for the crashed worker's own (monotonic) clock.
    await s3.backdate_claims(crashed.key)
    monkeypatch.setattr('pydantic_graph_s3.persistence.monotonic', lambda: time.monotonic() + AGED.total_seconds())
    survivor = worker(s3, 'stale-pending')
    reclaimed = await survivor.load_next()
    assert reclaimed is not None and reclaimed.id == snapshot_id and reclaimed.status == 'running'
    record = await survivor.load_record()
    assert record.claims[snapshot_id].attempt == 2

    # The crashed worker comes back to life: it may no longer start the node, and writes nothing.
    _, etag, _ = await s3.get(survivor.key)
    with pytest.raises(
        ClaimLostError, match=rf's3://{s3.bucket}/runs/stale-pending\.json: claim on node snapshot'
    ) as e:
        async with crashed.record_run(snapshot_id):
            pytest.fail('a worker whose claim was taken over must not run the node')
    assert isinstance(e.value, S3PersistenceError) and e.value.snapshot_id == snapshot_id
    assert 'taken over by attempt 2' in str(e.value)
    assert (await s3.get(survivor.key))[1] == etag

    async with survivor.record_run(snapshot_id):
        pass
    await survivor.snapshot_end(CountDownState(0), End(0))
    first, end = await survivor.load_all()
    assert isinstance(first, NodeSnapshot) and first.status == 'success' and isinstance(end, EndSnapshot)


async def test_a_slow_worker_cannot_append_a_second_successor(s3: S3Bucket) -> None:
    snapshot_id = await started_run(s3, 'zombie')
    slow = worker(s3, 'zombie')
    assert await slow.load_next() is not None
    async with slow.record_run(snapshot_id):
        # The slow worker's node outlives reclaim_after: another takes the step over and completes it.
        await s3.backdate_claims(slow.key)
        survivor = worker(s3, 'zombie')
        async with count_down_graph.iter_from_persistence(survivor) as run:
            assert await run.next() == CountDown()
    _, etag, _ = await s3.get(slow.key)
    with pytest.raises(ClaimLostError, match='taken over by attempt 2'):
        await slow.snapshot_node(CountDownState(0), CountDown())
    assert (await s3.get(slow.key))[1] == etag, 'the slow worker wrote nothing'

    first, successor = await survivor.load_all()
    assert (first.id, first.status, successor.status) == (snapshot_id, 'success', 'created')


async def test_a_slow_worker_cannot_record_an_error_either(s3: S3Bucket) -> None:
    snapshot_id = await started_run(s3, 'zombie-error')
    slow = worker(s3, 'zombie-error')
    with pytest.raises(ClaimLostError) as caught:
        async with slow.record_run(snapshot_id):
            await s3.backdate_claims(slow.key)
            assert await worker(s3, 'zombie-error').load_next() is not None
            raise RuntimeError('the node failed, too late')
    assert isinstance(caught.value.__context__, RuntimeError)
    (snapshot,) = await slow.load_all()
    assert snapshot.status == 'running', 'the new claimant holds it, not failed by the old one'


async def test_graph_run_writes_each_success_with_its_successor(s3: S3Bucket) -> None:
    persistence = worker(s3, 'in-process')
    result = await count_down_graph.run(CountDown(), state=CountDownState(3), persistence=persistence)
    assert result.output == 0
    record = await persistence.load_record()
    nodes = [s for s in record.snapshots if isinstance(s, NodeSnapshot)]
    assert [s.status for s in nodes] == ['success'] * 4 and isinstance(record.snapshots[-1], EndSnapshot)
    assert [record.claims[s.id].attempt for s in nodes] == [1] * 4
    assert len({record.claims[s.id].token for s in nodes}) == 4
    # One PUT creates the first snapshot; then two per step: start, and success with the successor.
    assert persistence.stats.puts == 1 + 2 * 4


async def test_fresh_instance_per_step_with_claims(s3: S3Bucket) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(2), persistence=worker(s3, 'steps'))
    costs = []
    while True:
        persistence = worker(s3, 'steps')
        async with count_down_graph.iter_from_persistence(persistence) as run:
            end = isinstance(await run.next(), End)
        costs.append((persistence.stats.gets, persistence.stats.puts))
        if end:
            break
    history = await worker(s3, 'steps').load_all()
    assert [s.state.counter for s in history] == [2, 1, 0, 0]
    # A read, then the claim that starts the node, and the success with its successor.
    assert costs == [(1, 2)] * 3


async def test_claims_keep_the_object_loadable_by_file_persistence(s3: S3Bucket, tmp_path: Path) -> None:
    snapshot_id = await started_run(s3, 'interop', counter=2)
    persistence = worker(s3, 'interop')
    async with count_down_graph.iter_from_persistence(persistence) as run:
        await run.next()
    assert await worker(s3, 'interop').load_next() is not None  # a claim on the second snapshot too
    body, _, _ = await s3.get(persistence.key)
    items = json.loads(body)
    assert items[0]['claim']['attempt'] == 1 and set(items[0]['claim']) == {'token', 'claimed_at', 'attempt'}
    assert items[0]['id'] == snapshot_id and 'claim' in items[1]

    path = tmp_path / 'run.json'
    path.write_bytes(body)
    file_persistence: FileStatePersistence[Any, Any] = FileStatePersistence(path)
    file_persistence.set_graph_types(count_down_graph)
    history = await file_persistence.load_all()
    assert [(s.state.counter, getattr(s, 'status', None)) for s in history] == [(2, 'success'), (1, 'running')]
    # A writer without reclaim_after carries the claims through its own writes.
    strict = s3.persistence('interop')
    strict.set_graph_types(count_down_graph)
    await strict.snapshot_node(CountDownState(7), CountDown())
    assert [item.get('claim') for item in json.loads((await s3.get(persistence.key))[0])][:2] == [
        items[0]['claim'],
        items[1]['claim'],
    ]


async def test_max_attempts_marks_the_snapshot_error_with_the_reason(s3: S3Bucket) -> None:
    snapshot_id = await started_run(s3, 'give-up')
    assert await worker(s3, 'give-up', max_attempts=2).load_next() is not None
    await s3.backdate_claims('runs/give-up.json')
    assert await worker(s3, 'give-up', max_attempts=2).load_next() is not None  # attempt 2, dies too
    await s3.backdate_claims('runs/give-up.json')
    assert await worker(s3, 'give-up', max_attempts=2).load_next() is None
    record = await worker(s3, 'give-up').load_record()
    (snapshot,) = record.snapshots
    assert snapshot.status == 'error'
    reason = record.claims[snapshot_id].error
    assert reason is not None and '2 claim(s) went stale' in reason and 'max_attempts=2' in reason

    result = await GraphWorker(count_down_graph, bucket=s3.bucket, prefix='runs/', **s3.options()).advance('give-up')
    assert result.status == 'failed' and result.error == f'node CountDown {reason}'
    with pytest.raises(GraphNodeStatusError):
        async with worker(s3, 'give-up').record_run(snapshot_id):
            pytest.fail('an abandoned snapshot must not run')


async def test_concurrent_reclaims_have_one_winner(s3: S3Bucket) -> None:
    await started_run(s3, 'reclaim-race')
    assert await worker(s3, 'reclaim-race').load_next() is not None
    await s3.backdate_claims('runs/reclaim-race.json')
    claims: list[Any] = []

    async def claim() -> None:
        claims.append(await worker(s3, 'reclaim-race').load_next())

    async with anyio.create_task_group() as group:
        for _ in range(8):
            group.start_soon(claim)
    assert len([c for c in claims if c is not None]) == 1
    (snapshot,) = (await worker(s3, 'reclaim-race').load_record()).claims.values()
    assert snapshot.attempt == 2


def test_reclaim_options_are_checked() -> None:
    with pytest.raises(ValueError, match='reclaim_after must be positive'):
        S3StatePersistence(bucket='bkt', key='k', reclaim_after=timedelta(0))
    with pytest.raises(ValueError, match='max_attempts must be at least 1'):
        S3StatePersistence(bucket='bkt', key='k', max_attempts=0)


# --- GraphWorker --------------------------------------------------------------------------------------------


@dataclass
class Pause(BaseNode[CountDownState, None, int]):
    """Counts down; its first execution pauses until the test resumes it: a worker that is slow, not dead."""

    async def run(self, ctx: GraphRunContext[CountDownState]) -> Pause | End[int]:
        EXECUTIONS.append(ctx.state.counter)
        while len(EXECUTIONS) == 1 and not RESUMED:  # noqa: ASYNC110 (set by the test, on any loop)
            await asyncio.sleep(0.01)
        if ctx.state.counter <= 0:
            return End(ctx.state.counter)
        ctx.state.counter -= 1
        return Pause()


EXECUTIONS: list[int] = []
RESUMED: list[bool] = []
pause_graph = Graph(nodes=[Pause])


async def test_worker_reclaims_a_stale_step_and_a_fresh_claim_stays_busy(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv('PYDANTIC_GRAPH_S3_RECLAIM_AFTER', str(FRESH.total_seconds()))
    survivor = GraphWorker(count_down_graph, bucket=s3.bucket, prefix='runs/', **s3.options())
    assert survivor.persistence('w').reclaim_after == FRESH, 'reclaim_after comes from the environment'
    await survivor.start('w', CountDown(), CountDownState(2))
    assert await worker(s3, 'w').load_next() is not None  # a worker claims the step and dies

    busy = await survivor.advance('w')
    assert (busy.status, busy.steps, busy.next_node) == ('busy', 0, 'CountDown')
    await s3.backdate_claims('runs/w.json')
    done = await survivor.advance('w')
    assert (done.status, done.steps, done.output) == ('done', 3, 0)
    history = await worker(s3, 'w').load_all()
    assert [s.state.counter for s in history] == [2, 1, 0, 0]


async def test_a_worker_whose_step_was_taken_over_answers_busy(s3: S3Bucket) -> None:
    EXECUTIONS.clear()
    RESUMED.clear()
    options = {**s3.options(), 'reclaim_after': FRESH}
    slow = GraphWorker(pause_graph, bucket=s3.bucket, prefix='runs/', max_steps=1, **options)
    fast = GraphWorker(pause_graph, bucket=s3.bucket, prefix='runs/', max_steps=1, **options)
    await slow.start('taken', Pause(), CountDownState(1))
    results: list[Any] = []

    async def advance_slowly() -> None:
        results.append(await slow.advance('taken'))

    async with anyio.create_task_group() as group:
        group.start_soon(advance_slowly)
        with anyio.fail_after(600):  # a safety net only: the slow worker's node starts, however long that takes
            while not EXECUTIONS:  # noqa: ASYNC110 (appended by the node, in the task group)
                await anyio.sleep(0.01)
        # The slow worker's node outlives reclaim_after: another takes the step over and completes it.
        await s3.backdate_claims('runs/taken.json')
        taken = await fast.advance('taken')
        RESUMED.append(True)
    assert (taken.status, taken.steps, taken.next_node) == ('running', 1, 'Pause')
    assert [(r.status, r.steps) for r in results] == [('busy', 0)]
    assert EXECUTIONS == [1, 1], 'the node ran twice (at least once), the step counts once'
    history = await worker(s3, 'taken', graph=pause_graph).load_all()
    assert [(s.state.counter, s.status) for s in history] == [(1, 'success'), (0, 'created')]


# --- recover_run: an operator's immediate recovery ------------------------------------------------------------


async def test_recover_run_makes_a_stuck_step_runnable_now_and_fences_its_old_worker(s3: S3Bucket) -> None:
    snapshot_id = await started_run(s3, 'stuck')
    old = worker(s3, 'stuck')
    assert await old.load_next() is not None  # its worker is gone, and reclaim_after is far off
    assert await recover_run(worker(s3, 'stuck')) == [snapshot_id]
    assert await recover_run(worker(s3, 'stuck')) == [], 'nothing left to recover'

    (snapshot,) = await worker(s3, 'stuck').load_all()
    assert snapshot.status == 'created'
    # The old worker's claim is young, so it starts its node without a request (its `load_next` started it), and
    # learns of the revocation from its outcome's write, which is refused: nothing it writes lands.
    _, etag, _ = await s3.get(old.key)
    async with old.record_run(snapshot_id):
        pass
    with pytest.raises(ClaimLostError):
        await old.snapshot_node(CountDownState(0), CountDown())
    assert (await s3.get(old.key))[1] == etag, 'the old worker wrote nothing'
    async with count_down_graph.iter_from_persistence(worker(s3, 'stuck')) as run:
        assert await run.next() == CountDown()
    record = await worker(s3, 'stuck').load_record()
    assert record.claims[snapshot_id].attempt == 2, 'the recovered claim still counts'
    assert [getattr(s, 'status', None) for s in record.snapshots] == ['success', 'created']


async def test_recover_run_needs_the_graph_types(s3: S3Bucket) -> None:
    with pytest.raises(ValueError, match="needs its graph's types"):
        await recover_run(s3.persistence('untyped'))
