"""S3StatePersistence against a real HTTP S3 endpoint: every method, with FileStatePersistence's semantics."""

from __future__ import annotations as _annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.exceptions import GraphNodeStatusError, GraphRuntimeError
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot
from pydantic_graph.persistence.file import FileStatePersistence
from pydantic_graph.persistence.in_mem import FullStatePersistence

from pydantic_graph_s3 import S3StatePersistence, run_object_key, validate_run_id
from pydantic_graph_s3.examples.count_down import CountDown, CountDownState, count_down_graph, run_node, start_run

from .conftest import S3Bucket

pytestmark = pytest.mark.anyio


@dataclass
class Boom(BaseNode[CountDownState, None, int]):
    async def run(self, ctx: GraphRunContext[CountDownState]) -> End[int]:
        raise RuntimeError('node failed')


boom_graph = Graph(nodes=[Boom])


def typed(persistence: S3StatePersistence[Any, Any], graph: Graph[Any, Any, Any] = count_down_graph) -> Any:
    persistence.set_graph_types(graph)
    return persistence


# --- run ids and keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize('run_id', ['a', 'run_123abc', 'A.b_c=d-e', 'x' * 200, '..a', 'a..'])
def test_valid_run_ids(run_id: str) -> None:
    assert validate_run_id(run_id) == run_id
    assert S3StatePersistence.for_run(run_id, bucket='bkt', prefix='p/').key == f'p/{run_id}.json'


@pytest.mark.parametrize('run_id', ['', '.', '..', 'a/b', '../x', 'a\nb', 'x' * 201, 'a b', 'é', 'a\\b', 'a?b'])
def test_invalid_run_ids_raise_before_any_request(run_id: str) -> None:
    with pytest.raises(ValueError, match='invalid run id'):
        S3StatePersistence.for_run(run_id, bucket='bkt')
    with pytest.raises(ValueError, match='invalid run id'):
        run_object_key('p/', run_id)


def test_constructor_refuses_empty_bucket_or_key() -> None:
    with pytest.raises(ValueError, match='bucket'):
        S3StatePersistence(bucket='', key='k')
    with pytest.raises(ValueError, match='key'):
        S3StatePersistence(bucket='bkt', key='')


async def test_methods_need_types_first(s3: S3Bucket) -> None:
    persistence = s3.persistence('untyped')
    assert persistence.should_set_types()
    with pytest.raises(RuntimeError, match='snapshot types are not set'):
        await persistence.load_all()
    persistence.set_graph_types(count_down_graph)
    assert not persistence.should_set_types()


# --- the seed example, drop-in ------------------------------------------------------------------------------


async def test_seed_example_one_step_per_fresh_instance(s3: S3Bucket, aws_env: Any) -> None:
    # The seed example as written, with the default client configuration (AWS_ENDPOINT_URL_S3 from the env).
    if s3.name != 'moto':
        pytest.skip('the default AWS configuration points at moto')
    await start_run('seed', bucket=s3.bucket, prefix='runs/', counter=3)
    results = []
    while not isinstance(result := await run_node('seed', bucket=s3.bucket, prefix='runs/'), End):
        results.append(result)
    assert result == End(0)
    assert results == [CountDown(), CountDown(), CountDown()]

    history = await typed(s3.persistence('seed')).load_all()
    assert [(type(s).__name__, getattr(s, 'status', None)) for s in history] == [
        ('NodeSnapshot', 'success'),
    ] * 4 + [('EndSnapshot', None)]
    assert [s.state.counter for s in history] == [3, 2, 1, 0, 0]


async def test_graph_run_matches_full_state_persistence(s3: S3Bucket) -> None:
    in_memory: FullStatePersistence[Any, Any] = FullStatePersistence()
    expected = await count_down_graph.run(CountDown(), state=CountDownState(4), persistence=in_memory)
    persistence = s3.persistence('in-process')
    result = await count_down_graph.run(CountDown(), state=CountDownState(4), persistence=persistence)

    assert result.output == expected.output == 0
    history = await persistence.load_all()
    assert [_shape(s) for s in history] == [_shape(s) for s in in_memory.history]


def _shape(snapshot: Any) -> tuple[Any, ...]:
    if isinstance(snapshot, NodeSnapshot):
        return ('node', snapshot.node, snapshot.state, snapshot.status, snapshot.start_ts is not None)
    return ('end', snapshot.result, snapshot.state)


# --- each method ---------------------------------------------------------------------------------------------


async def test_snapshot_methods_and_load_all(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('methods'))
    assert await persistence.load_all() == []
    assert await persistence.load_next() is None

    await persistence.snapshot_node(CountDownState(2), CountDown())
    await persistence.snapshot_end(CountDownState(0), End(7))
    first, end = await persistence.load_all()
    assert isinstance(first, NodeSnapshot)
    assert (first.state, first.status, first.start_ts, first.duration) == (CountDownState(2), 'created', None, None)
    assert isinstance(end, EndSnapshot)
    assert (end.state, end.result) == (CountDownState(0), End(7))

    body, _, content_type = await s3.get(persistence.key)
    assert content_type == 'application/json'
    assert json.loads(body)[0]['node'] == {'node_id': 'CountDown'}


async def test_stored_snapshots_share_nothing_with_the_callers_state(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('detached'))
    state, node = CountDownState(5), CountDown()
    await persistence.snapshot_node(state, node)
    state.counter = 99  # the graph goes on changing its state in place
    await persistence.snapshot_end(state, End(0))
    state.counter = 100
    first, end = await persistence.load_all()
    assert (first.state, end.state) == (CountDownState(5), CountDownState(99))
    assert first.id == node.get_snapshot_id(), "the caller's node carries its snapshot id"


async def test_snapshot_node_if_new_writes_once(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('if-new'))
    node = CountDown()
    await persistence.snapshot_node_if_new(node.get_snapshot_id(), CountDownState(1), node)
    _, etag, _ = await s3.get(persistence.key)
    await persistence.snapshot_node_if_new(node.get_snapshot_id(), CountDownState(99), node)

    assert [s.state for s in await persistence.load_all()] == [CountDownState(1)]
    assert (await s3.get(persistence.key))[1] == etag, 'an existing snapshot id must not cause a write'


async def test_load_next_claims_and_starts_created_snapshots_in_order(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('load-next'))
    await persistence.snapshot_node(CountDownState(1), CountDown())
    await persistence.snapshot_node(CountDownState(2), CountDown())

    first = await persistence.load_next()
    second = await persistence.load_next()
    assert first is not None and second is not None
    # Claimed and started in one write: `running` (FileStatePersistence says `pending` until record_run).
    assert (first.state, first.status, second.state, second.status) == (
        CountDownState(1),
        'running',
        CountDownState(2),
        'running',
    )
    assert first.start_ts is not None and second.start_ts is not None
    assert await persistence.load_next() is None
    assert [s.status for s in await persistence.load_all()] == ['running', 'running']


async def test_record_run_after_load_next_writes_nothing_on_entry(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('claimed'))
    await persistence.snapshot_node(CountDownState(1), CountDown())
    claimed = await persistence.load_next()
    assert claimed is not None
    _, etag, _ = await s3.get(persistence.key)

    with pytest.raises(GraphNodeStatusError, match="'running'"):
        async with typed(s3.persistence('claimed')).record_run(claimed.id):
            pytest.fail('another caller must not start a node that load_next handed out')
    async with persistence.record_run(claimed.id):
        assert (await s3.get(persistence.key))[1] == etag, 'the claim started the node already'
    await persistence.snapshot_end(CountDownState(0), End(0))
    node, _ = await persistence.load_all()
    assert isinstance(node, NodeSnapshot)
    assert (node.status, node.start_ts, node.duration is not None) == ('success', claimed.start_ts, True)


async def test_record_run_statuses(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('record'))
    node = CountDown()
    await persistence.snapshot_node(CountDownState(1), node)
    snapshot_id = node.get_snapshot_id()

    async with persistence.record_run(snapshot_id):
        (running,) = await typed(s3.persistence('record')).load_all()
        assert running.status == 'running' and running.start_ts is not None
    (done,) = await persistence.load_all()
    assert done.status == 'success' and done.duration is not None and done.duration >= 0

    for status in ('success',):
        with pytest.raises(GraphNodeStatusError, match=repr(status)):
            async with persistence.record_run(snapshot_id):
                pytest.fail('must not run')


async def test_record_run_refuses_running_node_and_records_errors(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('record-error'))
    node = CountDown()
    await persistence.snapshot_node(CountDownState(1), node)

    with pytest.raises(RuntimeError, match='inside'):
        async with persistence.record_run(node.get_snapshot_id()):
            with pytest.raises(GraphNodeStatusError, match="'running'"):
                async with typed(s3.persistence('record-error')).record_run(node.get_snapshot_id()):
                    pytest.fail('a running node must not start twice')
            raise RuntimeError('inside')
    (snapshot,) = await persistence.load_all()
    assert snapshot.status == 'error' and snapshot.duration is not None


async def test_record_run_unknown_or_end_snapshot(s3: S3Bucket) -> None:
    persistence = typed(s3.persistence('record-unknown'))
    end = End(1)
    await persistence.snapshot_end(CountDownState(0), end)
    _, etag, _ = await s3.get(persistence.key)

    with pytest.raises(LookupError, match="No snapshot found with id='nope'"):
        async with persistence.record_run('nope'):
            pass
    with pytest.raises(TypeError, match='only node snapshots'):
        async with persistence.record_run(end.get_snapshot_id()):
            pass
    assert (await s3.get(persistence.key))[1] == etag, 'refused calls must not write'


async def test_node_error_is_recorded_by_graph(s3: S3Bucket) -> None:
    persistence = s3.persistence('boom')
    with pytest.raises(RuntimeError, match='node failed'):
        await boom_graph.run(Boom(), state=CountDownState(0), persistence=persistence)
    (snapshot,) = await persistence.load_all()
    assert isinstance(snapshot, NodeSnapshot)
    assert snapshot.status == 'error'


async def test_iter_from_persistence_without_created_snapshot(s3: S3Bucket) -> None:
    persistence = s3.persistence('nothing-to-do')
    with pytest.raises(GraphRuntimeError, match='Unable to restore snapshot'):
        async with count_down_graph.iter_from_persistence(persistence):
            pass


# --- interoperability with FileStatePersistence --------------------------------------------------------------


async def test_object_is_byte_for_byte_what_file_persistence_writes(s3: S3Bucket, tmp_path: Path) -> None:
    persistence = s3.persistence('bytes')
    await count_down_graph.run(CountDown(), state=CountDownState(2), persistence=persistence)
    body, _, _ = await s3.get(persistence.key)

    file_persistence: FileStatePersistence[Any, Any] = FileStatePersistence(tmp_path / 'run.json')
    file_persistence.set_graph_types(count_down_graph)
    (tmp_path / 'run.json').write_bytes(body)
    snapshots = await file_persistence.load_all()
    assert len(snapshots) == 4
    # What FileStatePersistence._save_sync writes for this list, byte for byte.
    file_persistence._save_sync(snapshots)
    assert (tmp_path / 'run.json').read_bytes() == body


async def test_file_run_resumes_from_s3_and_back(s3: S3Bucket, tmp_path: Path) -> None:
    path = tmp_path / 'run.json'
    # Started on local disk with FileStatePersistence, one step taken there...
    await count_down_graph.initialize(CountDown(), state=CountDownState(3), persistence=FileStatePersistence(path))
    async with count_down_graph.iter_from_persistence(FileStatePersistence(path)) as run:
        await run.next()
    # ...uploaded and advanced two steps from S3...
    await s3.put('runs/moved.json', path.read_bytes())
    for _ in range(2):
        async with count_down_graph.iter_from_persistence(s3.persistence('moved')) as run:
            await run.next()
    # ...downloaded and finished on local disk again.
    path.write_bytes((await s3.get('runs/moved.json'))[0])
    while True:
        async with count_down_graph.iter_from_persistence(FileStatePersistence(path)) as run:
            if isinstance(await run.next(), End):
                break
    file_persistence: FileStatePersistence[Any, Any] = FileStatePersistence(path)
    file_persistence.set_graph_types(count_down_graph)
    history = await file_persistence.load_all()
    assert [s.state.counter for s in history] == [3, 2, 1, 0, 0]
    assert all(s.status == 'success' for s in history if isinstance(s, NodeSnapshot))
