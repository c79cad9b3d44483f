"""The library deletes only objects it can prove it wrote (see `pydantic_graph_s3.cleanup`).

Every test keeps foreign objects beside the runs: keys with a `~` that are not exactly a segment's, keys of deeper
prefixes (another deployment's runs under `p/q~/`), and the usage memo. `delete_run` and `prune` must leave them.
"""

from __future__ import annotations as _annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pydantic_graph_s3 import ClientSettings, RunStore, run_objects
from pydantic_graph_s3.cleanup import ORPHAN_GRACE
from pydantic_graph_s3.layout import decode_head, parse_segment_key, segment_key
from pydantic_graph_s3.run_objects import CREATE_WINDOW, RunObjects
from pydantic_s3_cas import DeadlineExceededError, ObjectChangedError, ObjectInfo

from .conftest import S3Bucket
from .support.fault_proxy import Fault, fault_proxy
from .test_long_runs import PAD, Pad, PadState, keys, pad_graph

pytestmark = pytest.mark.anyio

FOREIGN = (
    'p/notes.txt~',
    'p/backup~2024.tar',
    'p/x~y/z.json',
    'p/a~0123456789ab~1.json',  # seq not as written
    'p/a~0123456789ab~00000000.json',  # seq 0 is never written
    'p/a~0123456789AB~00000001.json',  # not the hex a segment id is written in
    'p/a~0123456789ab~00000001.json.bak',
    'p/a~0123456789ab~00000001.json/x',
    'p/..~0123456789ab~00000001.json',  # not a run id
    'p/a~b~0123456789ab~00000001.json',
    'p/~usage.json~0123456789ab~00000001.json',
)
FAR = datetime.now(tz=UTC) + 100 * ORPHAN_GRACE
"""A time at which every object written by a test is far older than `ORPHAN_GRACE`."""


def store(s3: S3Bucket, prefix: str = 'p/') -> RunStore:
    return RunStore(s3.bucket, prefix, **s3.options())


async def segmented_run(s3: S3Bucket, run_id: str, prefix: str = 'p/', *, ended: bool = True) -> list[str]:
    """A run with sealed history under `prefix`; returns its segments' keys."""
    persistence = s3.persistence(run_id, prefix=prefix)
    if ended:
        await pad_graph.run(Pad(), state=PadState(9, 'x' * PAD), persistence=persistence)
    else:
        await pad_graph.initialize(Pad(), state=PadState(9, 'x' * PAD), persistence=persistence)
    head = decode_head((await s3.get(persistence.key))[0])
    assert head.segment_id is not None or not ended
    return [k for k in await keys(s3, prefix) if (name := parse_segment_key(prefix, k)) and name[0] == run_id]


async def waiting_run(s3: S3Bucket, run_id: str) -> int:
    """A run with sealed history whose last snapshot waits for a worker (so prune keeps it); returns its length.

    A fork of an ended run, at its 9th snapshot; the ended run is deleted.
    """
    runs = store(s3)
    await segmented_run(s3, f'seed-{run_id}')
    at = (await runs.history(f'seed-{run_id}')).snapshots[8].id
    await runs.fork_run(f'seed-{run_id}', at=at, new_run_id=run_id, graph=pad_graph)
    await runs.delete_run(f'seed-{run_id}', etag=(await runs.get_run(f'seed-{run_id}')).etag)
    assert decode_head((await s3.get(f'p/{run_id}.json'))[0]).segmented
    return 9


async def put_foreign(s3: S3Bucket) -> None:
    for key in FOREIGN:
        await s3.put(key, b'not a run')


async def readable(s3: S3Bucket, run_id: str, prefix: str) -> int:
    """How many snapshots the run has, read whole (every segment) through the library."""
    persistence = s3.persistence(run_id, prefix=prefix)
    persistence.set_graph_types(pad_graph)
    return len(await persistence.load_all())


def test_a_segment_is_recognised_exactly() -> None:
    good = segment_key('p/run-1.json', '0123456789ab', 3)
    assert parse_segment_key('p/', good) == ('run-1', '0123456789ab', 3)
    assert parse_segment_key('p/', segment_key('p/r.json', 'f' * 32, 123_456_789)) == ('r', 'f' * 32, 123_456_789)
    assert parse_segment_key('q/', good) is None
    assert parse_segment_key('', good) is None, 'nested under the root prefix: never a run of it'
    for key in FOREIGN:
        assert parse_segment_key('p/', key) is None, key
    assert parse_segment_key('p/', 'p/a~0123456789ab~000000001.json') is None, 'seq with a padding zero too many'


def test_the_grace_outlasts_any_creation() -> None:
    # A segment without a head is swept only when older than any import or fork may take (and clocks may differ).
    assert ORPHAN_GRACE >= 24 * CREATE_WINDOW


async def test_prune_on_a_prefix_without_runs_deletes_nothing(s3: S3Bucket) -> None:
    await put_foreign(s3)
    other = await segmented_run(s3, 'r', prefix='p/q~/')  # another deployment's run, under a deeper prefix
    before = await keys(s3, '')
    outcomes = [o async for o in store(s3).prune(ended_before=FAR, now=FAR)]
    assert outcomes == []
    assert await keys(s3, '') == before
    assert other and await readable(s3, 'r', 'p/q~/') == 11


async def test_delete_and_prune_take_a_run_and_its_segments_only(s3: S3Bucket) -> None:
    await put_foreign(s3)
    other = await segmented_run(s3, 'r', prefix='p/q~/')
    own = await segmented_run(s3, 'q')  # its segments are p/q~..., its group prefix also lists p/q~/...
    assert own
    runs = store(s3)
    await runs.delete_run('q', etag=(await runs.get_run('q')).etag)
    remaining = await keys(s3, '')
    assert not [k for k in remaining if k == 'p/q.json' or k in own]
    assert set(FOREIGN) | set(other) | {'p/q~/r.json'} == set(remaining)
    assert await readable(s3, 'r', 'p/q~/') == 11

    await segmented_run(s3, 'q')
    outcomes = [o async for o in runs.prune(ended_before=FAR, now=FAR)]
    assert [(o.run.run_id, o.deleted) for o in outcomes] == [('q', True)]
    assert set(await keys(s3, '')) == set(remaining)


async def test_delete_takes_only_the_segments_its_head_names(s3: S3Bucket) -> None:
    own = await segmented_run(s3, 'a')
    head = decode_head((await s3.get('p/a.json'))[0])
    assert head.segment_id is not None
    # A leftover of an earlier run of the same id (another segment id): not named by the head read.
    leftover = segment_key('p/a.json', 'feedfeedfeed', 1)
    await s3.put(leftover, b'[]')
    runs = store(s3)
    await runs.delete_run('a', etag=(await runs.get_run('a')).etag)
    assert await keys(s3, 'p/') == [leftover], own
    # Without a head, it is an orphan: swept once older than the grace, and not before.
    assert [o async for o in runs.prune(ended_before=FAR)] == []
    assert await keys(s3, 'p/') == [leftover]
    assert [o async for o in runs.prune(ended_before=FAR, now=FAR)] == []
    assert await keys(s3, 'p/') == []


async def test_prune_keeps_the_segments_of_an_import_under_way(s3: S3Bucket) -> None:
    # An import or a fork writes its segments, then its head; a prune between the two must leave them.
    segments = await segmented_run(s3, 'new')
    head_body, _, _ = await s3.get('p/new.json')
    await s3.raw.delete_object(Bucket=s3.bucket, Key='p/new.json')
    outcomes = [o async for o in store(s3).prune(ended_before=datetime.now(tz=UTC) + timedelta(days=1))]
    assert outcomes == []
    assert await keys(s3, 'p/') == sorted(segments)
    await s3.put('p/new.json', head_body)  # the import's head lands
    assert await readable(s3, 'new', 'p/') == 11


async def test_prune_checks_again_that_the_head_is_absent_before_deleting(
    s3: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listing prune decides from is taken before the head of a run being created lands; the segments are
    # old enough to sweep (`now` far ahead), so only the check just before deleting can keep them.
    snapshots = await waiting_run(s3, 'late')
    head_body, _, _ = await s3.get('p/late.json')
    await s3.raw.delete_object(Bucket=s3.bucket, Key='p/late.json')
    listing = RunObjects.pages

    async def then_the_head_lands(objects: RunObjects, prefix: str | None = None) -> AsyncIterator[list[ObjectInfo]]:
        async for page in listing(objects, prefix):
            yield page
        if prefix is None and not (await keys(s3, 'p/late.json')):
            await s3.put('p/late.json', head_body)

    monkeypatch.setattr(RunObjects, 'pages', then_the_head_lands)
    outcomes = [o async for o in store(s3).prune(ended_before=FAR, now=FAR)]
    assert [(o.run.run_id, o.deleted) for o in outcomes] == [('late', False)]
    assert await readable(s3, 'late', 'p/') == snapshots


async def test_delete_refuses_a_head_written_since_and_deletes_nothing(s3: S3Bucket) -> None:
    await segmented_run(s3, 'busy', ended=False)
    runs = store(s3)
    seen = await runs.get_run('busy')
    await pad_graph.run(Pad(), state=PadState(1), persistence=s3.persistence('other', prefix='p/'))
    persistence = s3.persistence('busy', prefix='p/')
    async with pad_graph.iter_from_persistence(persistence) as run:
        await run.next()
    before = await keys(s3, 'p/')
    with pytest.raises(ObjectChangedError):
        await runs.delete_run('busy', etag=seen.etag)
    assert await keys(s3, 'p/') == before


async def test_a_long_etag_is_quoted_cut_short(s3: S3Bucket, caplog: pytest.LogCaptureFixture) -> None:
    await segmented_run(s3, 'a', ended=False)
    caplog.set_level('DEBUG', logger='pydantic_graph_s3')
    etag = '"' + 'e' * 5000 + '"'
    with pytest.raises(ObjectChangedError) as refused:
        await store(s3).delete_run('a', etag=etag)
    # The conditional request itself, which sends the ETag (and logs it at DEBUG).
    with pytest.raises(ObjectChangedError) as sent:
        await store(s3)._objects.object('p/a.json').delete(etag)
    for error in (refused.value, sent.value):
        assert 'e' * 101 not in str(error) and '5002 characters' in str(error)
    records = [r.getMessage() for r in caplog.records if 'DeleteObject' in r.getMessage()]
    assert records and all('e' * 101 not in message for message in records)


async def test_an_import_that_cannot_write_its_head_within_the_window_gives_up(
    s3: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What lets prune's grace be safe: an import (or fork) never writes its head long after its segments. Here the
    # head's PUT is held unanswered; the window (shortened, so the test is quick) ends the import without a head.
    await waiting_run(s3, 'source')
    await store(s3).export_run('source', tmp_path / 'source.json')
    monkeypatch.setattr(run_objects, 'CREATE_WINDOW', timedelta(seconds=3))
    with fault_proxy(s3.endpoint.url) as proxy:
        proxy.inject(Fault(timeout=True, method='PUT', path=r'p/slow\.json', times=None))
        slow = RunStore(s3.bucket, 'p/', **s3.options(client_settings=ClientSettings(endpoint_url=proxy.url)))
        with pytest.raises(DeadlineExceededError):
            await slow.import_run(tmp_path / 'source.json', 'slow', pad_graph)
    listed = await keys(s3, 'p/slow')
    assert 'p/slow.json' not in listed and listed, 'its segments were written, its head never'
