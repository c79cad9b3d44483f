"""Time travel: fork a run at a snapshot, roll a run back, correct a waiting run's state, while workers run."""

from __future__ import annotations as _annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pydantic_core
import pytest
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot

from pydantic_graph_s3 import ObjectChangedError, ObjectExistsError, ObjectNotFoundError, RunStore
from pydantic_graph_s3.cli import ExitCode
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph
from pydantic_graph_s3.insight import END, run_path
from pydantic_graph_s3.persistence import ClaimLostError, S3StatePersistence
from pydantic_graph_s3.time_travel import (
    RunBusyError,
    SnapshotKindError,
    SnapshotNotFoundError,
    StateValidationError,
)

from .conftest import FAST_RETRY, S3Bucket
from .support.fixtures import new_session
from .test_cli import GRAPH, cli
from .test_insight import Fragile, Step, fragile_graph

pytestmark = pytest.mark.anyio


def store(s3: S3Bucket, **options: Any) -> RunStore:
    """A store with a session, and so a client and connection pool, of its own."""
    session = new_session(s3.endpoint)
    return RunStore(s3.bucket, 'runs/', session=session, client_settings=s3.settings, retry=FAST_RETRY, **options)


def worker(s3: S3Bucket, run_id: str, graph: Any = count_down_graph, **options: Any) -> S3StatePersistence[Any, Any]:
    persistence = s3.persistence(run_id, session=new_session(s3.endpoint), **options)
    persistence.set_graph_types(graph)
    return persistence


async def finish(persistence: S3StatePersistence[Any, Any], graph: Any = count_down_graph) -> Any:
    """Advance the run to its end from what is stored, as any worker would; return its result."""
    async with graph.iter_from_persistence(persistence) as run:
        async for _ in run:
            pass
    assert run.result is not None
    return run.result.output


async def step(persistence: S3StatePersistence[Any, Any]) -> bool:
    """One step of the count-down with this persistence; whether the run has ended."""
    async with count_down_graph.iter_from_persistence(persistence) as run:
        return not isinstance(await run.next(), CountDown)


async def advance(s3: S3Bucket, run_id: str) -> None:
    """A worker (with claims) advancing the run step by step to its end, as fast as it can."""
    source = worker(s3, run_id, reclaim_after=timedelta(hours=1))
    while not await step(source):
        pass


async def test_fork_copies_the_history_and_leaves_the_source_byte_for_byte(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(3), persistence=s3.persistence('source'))
    before = await s3.get('runs/source.json')
    history = await store(s3).history('source', count_down_graph)
    at = history.snapshots[2]  # CountDown with the counter at 1
    assert (at.node, at.state) == ('CountDown', {'counter': 1})

    copy_id = await store(s3).fork_run('source', at=at.id, new_run_id='fork', graph=count_down_graph)
    assert await s3.get('runs/source.json') == before, 'the source is only read: same bytes, same ETag'

    forked = pydantic_core.from_json((await s3.get('runs/fork.json'))[0])
    source = pydantic_core.from_json(before[0])
    assert forked[:2] == source[:2], 'the history before the fork point is copied as stored'
    assert (forked[2]['id'], forked[2]['status'], forked[2]['state']) == (copy_id, 'created', {'counter': 1})
    assert forked[2]['copy_of']['run_id'] == 'source' and forked[2]['copy_of']['snapshot_id'] == at.id
    assert (forked[2]['start_ts'], forked[2]['duration']) == (None, None)

    # Any worker advances the fork, from the copy, to its own end.
    assert await finish(worker(s3, 'fork')) == 0
    snapshots = await worker(s3, 'fork').load_all()
    assert [s.state.counter for s in snapshots] == [3, 2, 1, 0, 0]
    assert isinstance(snapshots[-1], EndSnapshot)

    # With a new state: validated first, then the copy carries it.
    await store(s3).fork_run('source', at=at.id, new_run_id='fork-5', graph=count_down_graph, state={'counter': 5})
    assert await finish(worker(s3, 'fork-5')) == 0
    assert len(await worker(s3, 'fork-5').load_all()) == 2 + 6 + 1


async def test_fork_refuses_bad_input_before_writing_anything(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(1), persistence=s3.persistence('source'))
    history = await store(s3).history('source')
    first, end = history.snapshots[0].id, history.snapshots[-1].id
    runs = store(s3)

    with pytest.raises(SnapshotNotFoundError, match="run source has no snapshot 'CountDown:nope'"):
        await runs.fork_run('source', at='CountDown:nope', new_run_id='new', graph=count_down_graph)
    with pytest.raises(SnapshotKindError, match='is its end snapshot'):
        await runs.fork_run('source', at=end, new_run_id='new', graph=count_down_graph)
    with pytest.raises(StateValidationError, match=r'not a valid CountDownState .*counter') as invalid:
        await runs.fork_run('source', at=first, new_run_id='new', graph=count_down_graph, state={'counter': 'x1y'})
    assert 'x1y' not in str(invalid.value), 'no state value in an error message'
    with pytest.raises(ObjectNotFoundError):
        await runs.fork_run('missing', at=first, new_run_id='new', graph=count_down_graph)
    listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix='runs/new')
    assert listed.get('KeyCount', 0) == 0, 'nothing was written'

    await runs.fork_run('source', at=first, new_run_id='new', graph=count_down_graph)
    kept = await s3.get('runs/new.json')
    with pytest.raises(ObjectExistsError):
        await runs.fork_run('source', at=first, new_run_id='new', graph=count_down_graph)
    assert await s3.get('runs/new.json') == kept


async def test_two_forks_racing_to_one_new_run_id_have_one_winner(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(2), persistence=s3.persistence('source'))
    at = (await store(s3).history('source')).snapshots[1].id
    outcomes: list[str | Exception] = []

    async def fork(counter: int) -> None:
        try:
            state = {'counter': counter}
            outcomes.append(
                await store(s3).fork_run('source', at=at, new_run_id='x', graph=count_down_graph, state=state)
            )
        except ObjectExistsError as e:
            outcomes.append(e)

    async with anyio.create_task_group() as group:
        for counter in range(6):
            group.start_soon(fork, counter)

    winners = [o for o in outcomes if isinstance(o, str)]
    assert len(outcomes) == 6 and len(winners) == 1
    forked = pydantic_core.from_json((await s3.get('runs/x.json'))[0])
    assert forked[-1]['id'] == winners[0] and len(forked) == 2


async def test_fork_while_a_worker_advances_the_source(s3: S3Bucket) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(8), persistence=s3.persistence('busy'))
    first = (await store(s3).history('busy')).snapshots[0].id
    forks: list[str] = []

    async def fork_repeatedly() -> None:
        for index in range(4):
            forks.append(await store(s3).fork_run('busy', at=first, new_run_id=f'f{index}', graph=count_down_graph))

    async with anyio.create_task_group() as group:
        group.start_soon(advance, s3, 'busy')
        group.start_soon(fork_repeatedly)

    source = await worker(s3, 'busy').load_all()
    assert [s.state.counter for s in source] == [8, 7, 6, 5, 4, 3, 2, 1, 0, 0], 'the source ran as if alone'
    for index, copy_id in enumerate(forks):
        assert await finish(worker(s3, f'f{index}')) == 0
        history = await worker(s3, f'f{index}').load_all()
        assert history[0].id == copy_id and len(history) == 10


async def stale_claim(s3: S3Bucket, run_id: str, monkeypatch: pytest.MonkeyPatch) -> S3StatePersistence[Any, Any]:
    """A worker that claimed the run's next step an hour ago (as its claim, and its own clock, say), and is still
    around."""
    claimer = worker(s3, run_id, reclaim_after=timedelta(minutes=5))
    assert await claimer.load_next() is not None
    body, _, _ = await s3.get(f'runs/{run_id}.json')
    hour_ago = (datetime.now(tz=UTC) - timedelta(hours=1)).isoformat().encode()
    await s3.put(f'runs/{run_id}.json', re.sub(rb'"claimed_at": "[^"]+"', b'"claimed_at": "' + hour_ago + b'"', body))
    monkeypatch.setattr('pydantic_graph_s3.persistence.monotonic', lambda: time.monotonic() + 3600)
    claimer._cas().forget_cache()
    return claimer


async def test_rollback_continues_a_failed_run_from_a_good_snapshot(s3: S3Bucket) -> None:
    with pytest.raises(RuntimeError, match='on purpose'):
        await fragile_graph.run(Step(2), state=Fragile(fail_at=1), persistence=s3.persistence('failed'))
    history = await store(s3).history('failed', fragile_graph)
    assert [row.status for row in history.snapshots] == ['success', 'success', 'error']
    good = history.snapshots[1]  # Step(1), from where the run went to Break
    before, _, _ = await s3.get('runs/failed.json')

    copy_id = await store(s3).rollback_run('failed', to=good.id, graph=fragile_graph, state={'fail_at': -1})
    after, _, _ = await s3.get('runs/failed.json')
    assert pydantic_core.from_json(after)[:3] == pydantic_core.from_json(before), 'nothing is changed or deleted'
    assert await finish(worker(s3, 'failed', fragile_graph), fragile_graph) == 'done'

    history = await store(s3).history('failed', fragile_graph)
    assert [row.status for row in history.snapshots] == ['success', 'success', 'error', 'success', 'success', 'end']
    assert history.snapshots[3].id == copy_id
    assert history.snapshots[3].copy_of is not None and history.snapshots[3].copy_of.snapshot_id == good.id

    # The picture: Step -> Break was taken once and failed; the rollback is no edge, and the run is not failing now.
    path = run_path(history, stuck_after=timedelta(minutes=15))
    assert path.failed == {} and path.rolled_back == ((copy_id, good.id),)
    assert path.edges == {(END, 'Step'): 1, ('Step', 'Step'): 2, ('Step', 'Break'): 1, ('Step', END): 1}

    shown = await cli(s3, 'runs', 'show', 'failed')
    assert shown.code == 0, shown.stderr
    assert f'snapshot {copy_id}: rollback to snapshot {good.id} of this run' in shown.stdout.replace('\n', '')


async def test_rollback_is_refused_under_a_live_claim_and_fences_a_stale_one(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(3), persistence=s3.persistence('r'))
    first = (await store(s3).history('r')).snapshots[0].id
    holder = worker(s3, 'r', reclaim_after=timedelta(minutes=5))
    claimed = await holder.load_next()
    assert claimed is not None
    before = await s3.get('runs/r.json')
    with pytest.raises(RunBusyError, match='claimed at'):
        await store(s3).rollback_run('r', to=first, graph=count_down_graph)
    assert await s3.get('runs/r.json') == before

    await count_down_graph.initialize(CountDown(), state=CountDownState(3), persistence=s3.persistence('stale'))
    old = (await store(s3).history('stale')).snapshots[0].id
    stale = await stale_claim(s3, 'stale', monkeypatch)
    copy_id = await store(s3).rollback_run('stale', to=old, graph=count_down_graph)
    # The stale worker comes back: its claim was revoked, so its write is refused.
    with pytest.raises(ClaimLostError, match='superseded by rollback'):
        async with stale.record_run(old):
            pass
    stored = pydantic_core.from_json((await s3.get('runs/stale.json'))[0])
    assert [(s['status'], s.get('copy_of', {}).get('reason')) for s in stored] == [
        ('error', None),
        ('created', 'rollback'),
    ]
    assert stored[-1]['id'] == copy_id
    assert await finish(worker(s3, 'stale')) == 0


async def test_rollback_refuses_an_ended_run_a_changed_version_and_bad_input(s3: S3Bucket) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(1), persistence=s3.persistence('done'))
    history = await store(s3).history('done')
    first = history.snapshots[0].id
    with pytest.raises(RunBusyError, match='has ended: fork it'):
        await store(s3).rollback_run('done', to=first, graph=count_down_graph)

    await count_down_graph.initialize(CountDown(), state=CountDownState(2), persistence=s3.persistence('w'))
    first = (await store(s3).history('w')).snapshots[0].id
    etag = (await s3.get('runs/w.json'))[1]
    assert await step(worker(s3, 'w')) is False
    with pytest.raises(ObjectChangedError):
        await store(s3).rollback_run('w', to=first, graph=count_down_graph, etag=etag)
    with pytest.raises(SnapshotNotFoundError):
        await store(s3).rollback_run('w', to='CountDown:nope', graph=count_down_graph)
    with pytest.raises(StateValidationError):
        await store(s3).rollback_run('w', to=first, graph=count_down_graph, state={'counter': None})
    with pytest.raises(ObjectNotFoundError):
        await store(s3).rollback_run('nope', to=first, graph=count_down_graph)


async def test_rollback_racing_a_worker_never_forks_or_loses_the_run(s3: S3Bucket) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(6), persistence=s3.persistence('race'))
    first = (await store(s3).history('race')).snapshots[0].id
    outcomes: list[str] = []

    async def roll_back_once() -> None:
        for _ in range(40):
            try:
                outcomes.append(await store(s3).rollback_run('race', to=first, graph=count_down_graph))
                return
            except RunBusyError as e:
                outcomes.append('ended' if 'has ended' in str(e) else 'busy')
                if 'has ended' in str(e):
                    return

    async with anyio.create_task_group() as group:
        group.start_soon(advance, s3, 'race')
        group.start_soon(roll_back_once)

    # Whatever the interleaving, the run is whole, and ends: from the start again if the rollback landed.
    if not isinstance((await worker(s3, 'race').load_all())[-1], EndSnapshot):
        assert await finish(worker(s3, 'race')) == 0
    record = await worker(s3, 'race').load_record()
    snapshots = record.snapshots
    assert len({s.id for s in snapshots}) == len(snapshots)
    assert isinstance(snapshots[-1], EndSnapshot) and snapshots[-1].result.data == 0
    applied = [o for o in outcomes if o not in ('busy', 'ended')]
    superseded = [s for s in snapshots if isinstance(s, NodeSnapshot) and s.status == 'error']
    if applied:
        (copy_id,) = applied
        assert any(s.id == copy_id for s in snapshots)
        assert all('superseded by rollback' in (record.claims[s.id].error or '') for s in superseded)
        assert len(superseded) <= 1, 'only the step that was waiting when the rollback landed'
    else:
        assert superseded == [] and outcomes[-1] == 'ended'


async def test_update_state_corrects_a_waiting_run_and_is_refused_once_claimed(s3: S3Bucket) -> None:
    await count_down_graph.initialize(CountDown(), state=CountDownState(9), persistence=s3.persistence('wait'))
    etag = (await s3.get('runs/wait.json'))[1]
    with pytest.raises(StateValidationError):
        await store(s3).update_state('wait', {'counter': 'nine'}, graph=count_down_graph)
    assert (await s3.get('runs/wait.json'))[1] == etag, 'nothing written'

    snapshot_id = await store(s3).update_state('wait', b'{"counter": 2}', graph=count_down_graph, etag=etag)
    with pytest.raises(ObjectChangedError):
        await store(s3).update_state('wait', {'counter': 3}, graph=count_down_graph, etag=etag)
    assert await finish(worker(s3, 'wait')) == 0
    snapshots = await worker(s3, 'wait').load_all()
    assert snapshots[0].id == snapshot_id and [s.state.counter for s in snapshots] == [2, 1, 0, 0]

    await count_down_graph.initialize(CountDown(), state=CountDownState(9), persistence=s3.persistence('claimed'))
    assert await worker(s3, 'claimed').load_next() is not None
    with pytest.raises(RunBusyError, match='no waiting snapshot'):
        await store(s3).update_state('claimed', {'counter': 2}, graph=count_down_graph)


async def test_time_travel_across_sealed_history(s3: S3Bucket) -> None:
    """A run long enough that its early history sits in segments: fork and roll back to a sealed snapshot."""
    await count_down_graph.run(CountDown(), state=CountDownState(60), persistence=s3.persistence('long'))
    listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix='runs/long~')
    assert listed.get('KeyCount', 0) >= 1, 'the run has sealed segments'
    snapshots = await worker(s3, 'long').load_all()
    early = snapshots[3]
    head_before = await s3.get('runs/long.json')

    await store(s3).fork_run('long', at=early.id, new_run_id='long-fork', graph=count_down_graph)
    assert await s3.get('runs/long.json') == head_before
    assert await finish(worker(s3, 'long-fork')) == 0
    forked = await worker(s3, 'long-fork').load_all()
    assert [s.id for s in forked[:3]] == [s.id for s in snapshots[:3]] and len(forked) == len(snapshots)

    # A long run whose last step failed: rolled back to a sealed snapshot, with the cause fixed in its state.
    with pytest.raises(RuntimeError, match='on purpose'):
        await fragile_graph.run(Step(60), state=Fragile(fail_at=1), persistence=s3.persistence('long-failed'))
    stored = await worker(s3, 'long-failed', fragile_graph).load_all()
    assert (await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix='runs/long-failed~')).get('KeyCount', 0) >= 1
    copy_id = await store(s3).rollback_run('long-failed', to=stored[3].id, graph=fragile_graph, state={'fail_at': -1})
    assert await finish(worker(s3, 'long-failed', fragile_graph), fragile_graph) == 'done'
    after = await worker(s3, 'long-failed', fragile_graph).load_all()
    assert [s.id for s in after[: len(stored)]] == [s.id for s in stored], 'history is append-only'
    assert after[len(stored)].id == copy_id and len(after) == len(stored) + 58 + 1


async def test_cli_time_travel_exit_codes(s3: S3Bucket, tmp_path: Path) -> None:
    await count_down_graph.run(CountDown(), state=CountDownState(1), persistence=s3.persistence('done'))
    await count_down_graph.initialize(CountDown(), state=CountDownState(4), persistence=s3.persistence('wait'))
    rows = (await cli(s3, 'runs', 'show', 'done', '--json')).json()['snapshots']
    first, end = rows[0]['id'], rows[-1]['id']
    good, bad = tmp_path / 'good.json', tmp_path / 'bad.json'
    good.write_text(json.dumps({'counter': 2}))
    bad.write_text(json.dumps({'counter': 'lots'}))
    fork = ['runs', 'fork', 'done', '--graph', GRAPH]
    cases: list[tuple[list[str], int, str]] = [
        ([*fork, '--at', 'CountDown:nope', '--to', 'new'], ExitCode.NOT_FOUND, 'has no snapshot'),
        ([*fork, '--at', end, '--to', 'new'], ExitCode.USAGE, 'end snapshot'),
        ([*fork, '--at', first, '--to', 'new', '--state', str(bad)], ExitCode.USAGE, 'not a valid CountDownState'),
        ([*fork, '--at', first, '--to', 'wait'], ExitCode.CONFLICT, 'exists'),
        (['runs', 'fork', 'done', '--at', first, '--to', 'new'], ExitCode.USAGE, '--graph'),
        (['runs', 'rollback', 'done', '--to', first, '--graph', GRAPH], ExitCode.CONFLICT, 'has ended'),
        (['runs', 'update-state', 'wait', str(bad), '--graph', GRAPH], ExitCode.USAGE, 'not a valid'),
    ]
    for args, code, message in cases:
        result = await cli(s3, *args)
        assert (result.code, message in result.stderr) == (code, True), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 or code == ExitCode.USAGE, result.stderr
        assert 'lots' not in result.stderr

    forked = await cli(s3, *fork, '--at', first, '--to', 'new', '--state', str(good))
    assert forked.code == 0, forked.stderr
    updated = await cli(s3, 'runs', 'update-state', 'wait', str(good), '--graph', GRAPH)
    assert updated.code == 0, updated.stderr
    wait_first = (await cli(s3, 'runs', 'show', 'wait', '--json')).json()['snapshots'][0]
    assert wait_first['state'] == {'counter': 2}
