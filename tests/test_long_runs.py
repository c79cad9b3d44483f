"""Long runs (issue #8): the head and its segments, sealing, byte preservation, and operations on every object."""

from __future__ import annotations as _annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph
from pydantic_graph.persistence.file import FileStatePersistence

from pydantic_graph_s3 import (
    ClientSettings,
    CorruptObjectError,
    ObjectTooLargeError,
    RetriesExhaustedError,
    RetryPolicy,
    RunStore,
)
from pydantic_graph_s3.cleanup import ORPHAN_GRACE
from pydantic_graph_s3.layout import SEAL_THRESHOLD, decode_head, segment_group_prefix, segment_key
from pydantic_graph_s3.persistence import graph_types
from pydantic_s3_cas import shared_client

from .conftest import S3Bucket
from .support.fault_proxy import Fault, fault_proxy

pytestmark = pytest.mark.anyio

PAD = 3000  # bytes of state per snapshot: a segment every three finished snapshots


@dataclass
class PadState:
    counter: int
    pad: str = ''


@dataclass
class Pad(BaseNode[PadState, None, int]):
    async def run(self, ctx: GraphRunContext[PadState]) -> Pad | End[int]:
        if ctx.state.counter <= 0:
            return End(ctx.state.counter)
        ctx.state.counter -= 1
        return Pad()


pad_graph = Graph(nodes=[Pad])


async def keys(s3: S3Bucket, prefix: str = 'runs/') -> list[str]:
    listed = await s3.raw.list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(item['Key'] for item in listed.get('Contents', []))


async def step_fresh(s3: S3Bucket, run_id: str, **options: Any) -> Any:
    persistence = s3.persistence(run_id, **options)
    async with pad_graph.iter_from_persistence(persistence) as run:
        return await run.next()


def file_bytes(snapshots: list[Any]) -> bytes:
    """What `FileStatePersistence` writes for these snapshots."""
    return graph_types(pad_graph).adapter.dump_json(snapshots, indent=2)


async def test_a_short_run_stays_one_file_format_object(s3: S3Bucket) -> None:
    persistence = s3.persistence('short')
    await pad_graph.run(Pad(), state=PadState(2, 'x' * 100), persistence=persistence)
    body, _, _ = await s3.get(persistence.key)
    assert await keys(s3) == ['runs/short.json']
    assert body == file_bytes(await persistence.load_all())


async def test_sealing_moves_history_to_segments_and_export_assembles_the_file(s3: S3Bucket, tmp_path: Path) -> None:
    persistence = s3.persistence('long')
    result = await pad_graph.run(Pad(), state=PadState(12, 'x' * PAD), persistence=persistence)
    assert result.output == 0
    history = await persistence.load_all()
    assert [s.state.counter for s in history] == [*range(12, -1, -1), 0]
    assert [getattr(s, 'status', 'end') for s in history] == ['success'] * 13 + ['end']

    body, _, _ = await s3.get(persistence.key)
    head = decode_head(body)
    assert head.segmented and head.sealed_segments >= 3
    assert len(body) < SEAL_THRESHOLD + 3 * (PAD + 500), 'the head keeps less than the threshold plus its tail'
    segments = [k for k in await keys(s3) if k != persistence.key]
    assert len(segments) == head.sealed_segments
    assert all(k.startswith(segment_group_prefix(persistence.key)) for k in segments)

    # Every segment is itself a valid file, and the export is byte for byte the file of the whole history.
    for key in segments:
        segment, _, _ = await s3.get(key)
        assert {s.status for s in graph_types(pad_graph).adapter.validate_json(segment)} == {'success'}
    store = RunStore(s3.bucket, 'runs/', **s3.options())
    exported = tmp_path / 'long.json'
    summary = await store.export_run('long', exported)
    assert exported.read_bytes() == file_bytes(history)
    assert (summary.snapshots, summary.last_status, summary.ended) == (14, 'end', True)
    file = FileStatePersistence(exported)
    file.set_graph_types(pad_graph)
    assert await file.load_all() == history


async def test_a_fresh_instance_per_step_reads_only_the_head(s3: S3Bucket) -> None:
    first = s3.persistence('fresh')
    await pad_graph.initialize(Pad(), state=PadState(20, 'x' * PAD), persistence=first)
    costs = []
    while True:
        persistence = s3.persistence('fresh')
        async with pad_graph.iter_from_persistence(persistence) as run:
            node = await run.next()
        costs.append(persistence.stats)
        if isinstance(node, End):
            break
    # One GET of the head, never a segment; two head PUTs plus at most one segment PUT; the head stays small.
    assert all(c.gets == 1 and 2 <= c.puts <= 3 for c in costs)
    assert sum(c.puts for c in costs) > 2 * len(costs), 'segments were sealed'
    assert max(c.bytes_received for c in costs[5:]) < SEAL_THRESHOLD + 3 * (PAD + 500)


async def test_a_legacy_single_object_is_converted_in_one_write_and_exports(s3: S3Bucket, tmp_path: Path) -> None:
    # A run of today's layout, written by FileStatePersistence: 14 finished steps of 3 KB and the next node.
    file = FileStatePersistence(tmp_path / 'legacy.json')
    await pad_graph.initialize(Pad(), state=PadState(15, 'x' * PAD), persistence=file)
    for _ in range(14):
        async with pad_graph.iter_from_persistence(file) as run:
            await run.next()
    legacy = (tmp_path / 'legacy.json').read_bytes()
    await s3.put('runs/legacy.json', legacy)

    assert isinstance(await step_fresh(s3, 'legacy'), Pad)
    head = decode_head((await s3.get('runs/legacy.json'))[0])
    assert head.sealed_segments >= 4, 'converted into several segments in one write'
    while not isinstance(await step_fresh(s3, 'legacy'), End):
        pass
    exported = tmp_path / 'exported.json'
    await RunStore(s3.bucket, 'runs/', **s3.options()).export_run('legacy', exported)
    # The legacy file's bytes are kept: the export starts with them, up to the last snapshot it changed.
    unchanged = legacy[: legacy.rindex(b'\n  },\n  {\n')]
    assert exported.read_bytes().startswith(unchanged)
    persistence = s3.persistence('legacy')
    persistence.set_graph_types(pad_graph)
    assert exported.read_bytes() == file_bytes(await persistence.load_all())


async def test_unknown_keys_and_foreign_bytes_survive_byte_for_byte(s3: S3Bucket, tmp_path: Path) -> None:
    file = FileStatePersistence(tmp_path / 'f.json')
    await pad_graph.initialize(Pad(), state=PadState(6, 'x' * PAD), persistence=file)
    for _ in range(3):
        async with pad_graph.iter_from_persistence(file) as run:
            await run.next()
    items = json.loads((tmp_path / 'f.json').read_bytes())
    for item in items:
        item['state']['added_by_a_newer_worker'] = {'nested': [1, 2.5, 'é']}
        item['future_key'] = None
    body = json.dumps(items, indent=2, ensure_ascii=False).encode()
    await s3.put('runs/keys.json', body)
    while not isinstance(await step_fresh(s3, 'keys'), End):
        pass
    exported = tmp_path / 'out.json'
    await RunStore(s3.bucket, 'runs/', **s3.options()).export_run('keys', exported)
    out = exported.read_bytes()
    # The three finished snapshots are kept as they were stored, the claimed one only had its status keys set.
    for item in items[:3]:
        assert json.dumps(item, indent=2, ensure_ascii=False).replace('\n', '\n  ').encode() in out
    stored = json.loads(out)
    assert all(s['future_key'] is None and 'added_by_a_newer_worker' in s['state'] for s in stored[:4])


@dataclass
class NewState:
    counter: int
    customer: str = 'unknown'


@dataclass
class OldState:
    counter: int


@dataclass
class NewStep(BaseNode[NewState, None, int]):
    @classmethod
    def get_node_id(cls) -> str:  # type: ignore[override]  # two versions of one node, as in a deploy
        return 'Step'

    async def run(self, ctx: GraphRunContext[NewState]) -> NewStep | End[int]:
        if ctx.state.counter <= 0:
            return End(0)
        ctx.state.counter -= 1
        return NewStep()


@dataclass
class OldStep(BaseNode[OldState, None, int]):
    @classmethod
    def get_node_id(cls) -> str:  # type: ignore[override]  # two versions of one node, as in a deploy
        return 'Step'

    async def run(self, ctx: GraphRunContext[OldState]) -> OldStep | End[int]:
        if ctx.state.counter <= 0:
            return End(0)
        ctx.state.counter -= 1
        return OldStep()


new_graph, old_graph = Graph(nodes=[NewStep]), Graph(nodes=[OldStep])


async def test_rolling_deploy_an_older_worker_keeps_history_byte_for_byte(s3: S3Bucket) -> None:
    async def advance(graph: Graph[Any, Any, Any]) -> Any:
        async with graph.iter_from_persistence(s3.persistence('deploy')) as run:
            return await run.next()

    await new_graph.initialize(NewStep(), state=NewState(5, 'ACME'), persistence=s3.persistence('deploy'))
    await advance(new_graph)
    before = (await s3.get('runs/deploy.json'))[0]
    first_two = before[: before.rindex(b'\n  },\n  {\n')]
    assert b'"customer": "ACME"' in first_two

    await advance(old_graph)  # one step on a worker that does not know `customer`
    after = (await s3.get('runs/deploy.json'))[0]
    assert after.startswith(first_two), 'the older worker changed no byte of the history before it'
    assert after.count(b'"customer": "ACME"') == 2

    while not isinstance(await advance(new_graph), End):
        pass
    new = s3.persistence('deploy')
    new.set_graph_types(new_graph)
    customers = [s.state.customer for s in await new.load_all()]
    assert customers[:2] == ['ACME', 'ACME'] and customers[2] == 'unknown'


@pytest.mark.parametrize(
    'case',
    ['duplicate ids', 'end in the middle'],
)
async def test_duplicate_ids_or_an_end_in_the_middle_are_corrupt_and_untouched(s3: S3Bucket, case: str) -> None:
    persistence = s3.persistence('bad')
    await pad_graph.run(Pad(), state=PadState(1), persistence=persistence)
    items = json.loads((await s3.get(persistence.key))[0])
    if case == 'duplicate ids':
        items[2]['id'] = items[0]['id']
    else:
        items[1], items[2] = items[2], items[1]
    await s3.put(persistence.key, json.dumps(items, indent=2).encode())
    before = await s3.get(persistence.key)
    fresh = s3.persistence('bad')
    fresh.set_graph_types(pad_graph)
    for call in (fresh.load_all, fresh.load_next, lambda: fresh.snapshot_node(PadState(0), Pad())):
        with pytest.raises(CorruptObjectError, match='left untouched'):
            await call()
    assert await s3.get(persistence.key) == before


async def test_no_write_larger_than_max_object_bytes(s3: S3Bucket) -> None:
    persistence = s3.persistence('big', max_object_bytes=4000)
    persistence.set_graph_types(pad_graph)
    await persistence.snapshot_node(PadState(1, 'x' * 100), Pad())
    before = await s3.get(persistence.key)
    with pytest.raises(ObjectTooLargeError, match=r'runs/big\.json'):
        await persistence.snapshot_node(PadState(1, 'x' * 5000), Pad())
    assert persistence.stats.puts == 1, 'refused before sending'
    assert await s3.get(persistence.key) == before


async def test_an_orphan_segment_from_a_crash_before_the_head_swap_is_reused(s3: S3Bucket) -> None:
    await pad_graph.initialize(Pad(), state=PadState(12, 'x' * PAD), persistence=s3.persistence('orphan'))
    with fault_proxy(s3.endpoint.url) as proxy:
        settings = ClientSettings(endpoint_url=proxy.url, read_timeout=5.0)
        while not any('~' in k for k in await keys(s3)):
            # Every PUT of the head fails: a step that seals dies after its segment PUT, before the head swap.
            proxy.inject(Fault(status=503, method='PUT', path=r'orphan\.json', times=None))
            with pytest.raises(RetriesExhaustedError):
                await step_fresh(s3, 'orphan', client_settings=settings, retry=RetryPolicy(max_attempts=1))
            proxy.clear()
            if not any('~' in k for k in await keys(s3)):
                assert isinstance(await step_fresh(s3, 'orphan'), Pad)
    (orphan,) = [k for k in await keys(s3) if '~' in k]
    assert not decode_head((await s3.get('runs/orphan.json'))[0]).segmented, 'an orphan is not history'
    orphan_body, orphan_etag, _ = await s3.get(orphan)

    while not isinstance(await step_fresh(s3, 'orphan'), End):
        pass
    assert (await s3.get(orphan))[:2] == (orphan_body, orphan_etag), 'reused, never replaced'
    persistence = s3.persistence('orphan')
    persistence.set_graph_types(pad_graph)
    history = await persistence.load_all()
    assert [s.state.counter for s in history] == [*range(12, -1, -1), 0]


async def test_a_segment_with_other_bytes_is_corrupt_and_the_head_untouched(s3: S3Bucket) -> None:
    persistence = s3.persistence('tampered')
    await pad_graph.initialize(Pad(), state=PadState(9, 'x' * PAD), persistence=persistence)
    while not (head := decode_head((await s3.get(persistence.key))[0])).segmented:
        await step_fresh(s3, 'tampered')
    assert head.sealed_segments == 1 and head.segment_id is not None
    await s3.put(segment_key(persistence.key, head.segment_id, 2), b'[]')
    with pytest.raises(CorruptObjectError, match=r'~00000002\.json'):
        while not isinstance(await step_fresh(s3, 'tampered'), End):
            pass
    assert decode_head((await s3.get(persistence.key))[0]).sealed_segments == 1


async def test_listing_deleting_and_pruning_cover_every_object(s3: S3Bucket) -> None:
    for run_id in ('a', 'b'):
        await pad_graph.run(Pad(), state=PadState(9, 'x' * PAD), persistence=s3.persistence(run_id))
    await pad_graph.run(Pad(), state=PadState(1), persistence=s3.persistence('small'))
    assert len(await keys(s3)) > 3
    store = RunStore(s3.bucket, 'runs/', **s3.options())
    runs = [r async for r in store.list_runs()]
    assert sorted(r.run_id for r in runs) == ['a', 'b', 'small']
    assert {r.run_id: r.snapshots for r in runs} == {'a': 11, 'b': 11, 'small': 3}
    assert [r.run_id async for r in store.list_runs(decode=False)] == ['a', 'b', 'small']

    a = await store.get_run('a')
    await store.delete_run('a', etag=a.etag)
    assert not any(k.startswith('runs/a') for k in await keys(s3))
    # An orphan group whose head is gone (an import that died before its head) is swept by prune, once it is older
    # than ORPHAN_GRACE: an import still under way could own a younger one.
    await s3.put('runs/gone~0123456789ab~00000001.json', b'[]')
    outcomes = [o async for o in store.prune(ended_before=datetime.now(tz=UTC) + timedelta(minutes=1))]
    assert sorted(o.run.run_id for o in outcomes if o.deleted) == ['b', 'small']
    assert await keys(s3) == ['runs/gone~0123456789ab~00000001.json']
    later = datetime.now(tz=UTC) + ORPHAN_GRACE + timedelta(minutes=1)
    assert [o async for o in store.prune(ended_before=later, now=later)] == []
    assert await keys(s3) == []


async def test_import_stores_a_long_file_segmented_and_exports_it_unchanged(s3: S3Bucket, tmp_path: Path) -> None:
    file = FileStatePersistence(tmp_path / 'in.json')
    await pad_graph.run(Pad(), state=PadState(8, 'x' * PAD), persistence=file)
    store = RunStore(s3.bucket, 'runs/', **s3.options())
    summary = await store.import_run(tmp_path / 'in.json', 'imported', pad_graph)
    assert summary.snapshots == 10 and summary.ended
    assert len(await keys(s3)) > 1
    await store.export_run('imported', tmp_path / 'out.json')
    assert (tmp_path / 'out.json').read_bytes() == (tmp_path / 'in.json').read_bytes()
    history = await store.history('imported', pad_graph)
    assert [row.state['counter'] for row in history.snapshots] == [*range(8, -1, -1), 0]


async def test_stats_count_segment_requests(s3: S3Bucket) -> None:
    sent: list[str] = []
    persistence = s3.persistence('counted')
    client = await shared_client(s3.session, s3.settings)
    client.meta.events.register('before-send.s3', lambda request, **_: sent.append(request.method))
    await pad_graph.run(Pad(), state=PadState(9, 'x' * PAD), persistence=persistence)
    await persistence.load_all()
    assert persistence.stats.puts == sent.count('PUT') and persistence.stats.gets == sent.count('GET')
    segments = len([k for k in await keys(s3) if '~' in k])
    assert segments >= 2 and persistence.stats.puts == 1 + 2 * 10 + segments
    assert persistence.stats.gets == 1 + 1 + segments, 'load_all read the head and each segment once'


async def test_load_tail_reads_only_the_head(s3: S3Bucket) -> None:
    await pad_graph.run(Pad(), state=PadState(9, 'x' * PAD), persistence=s3.persistence('tail'))
    persistence = s3.persistence('tail')
    persistence.set_graph_types(pad_graph)
    tail = await persistence.load_tail()
    assert persistence.stats.gets == 1, 'no segment read'
    history = await persistence.load_all()
    assert len(tail.snapshots) < len(history) and tail.snapshots == history[-len(tail.snapshots) :]


async def test_a_missing_segment_is_reported_alike_by_a_worker_and_an_export(s3: S3Bucket, tmp_path: Path) -> None:
    """Sealed history has one reader: a segment gone is `CorruptObjectError` naming it, never a shorter history."""
    persistence = s3.persistence('holed')
    await pad_graph.run(Pad(), state=PadState(12, 'x' * PAD), persistence=persistence)
    head = decode_head((await s3.get(persistence.key))[0])
    missing = segment_key(persistence.key, head.segment_id or '', 2)
    await s3.raw.delete_object(Bucket=s3.bucket, Key=missing)

    fresh = s3.persistence('holed')
    fresh.set_graph_types(pad_graph)
    with pytest.raises(CorruptObjectError, match='segment 2 of the run is missing') as from_worker:
        await fresh.load_all()
    with pytest.raises(CorruptObjectError, match='segment 2 of the run is missing') as from_export:
        await RunStore(s3.bucket, 'runs/', **s3.options()).export_run('holed', tmp_path / 'holed.json')
    assert missing in str(from_worker.value) and missing in str(from_export.value)
    assert not (tmp_path / 'holed.json').exists()
