"""A long-lived persistence never answers "nothing to do" from its cached copy (issue #19, "also found").

Its writes are conditional, so a stale cache only costs a conflict; but a decision to write nothing, or to refuse,
taken from the cache would be wrong where `FileStatePersistence` (which reads its file every time) is right. Such a
decision is confirmed with a conditional GET (`If-None-Match`: 304 and no body while nothing changed).
"""

from __future__ import annotations as _annotations

import pytest
from pydantic_graph.persistence.file import FileStatePersistence

from .conftest import S3Bucket
from .test_long_runs import Pad, PadState, pad_graph

pytestmark = pytest.mark.anyio


async def test_load_next_sees_a_node_another_instance_added(s3: S3Bucket) -> None:
    a, b = s3.persistence('shared'), s3.persistence('shared')
    for persistence in (a, b):
        persistence.set_graph_types(pad_graph)
    await a.snapshot_node(PadState(2), Pad())
    assert await a.load_next() is not None, 'A claims the first node'
    await b.snapshot_node(PadState(1), Pad())
    added = await a.load_next()
    assert added is not None and added.state == PadState(1)


async def test_record_run_runs_a_node_another_instance_added(s3: S3Bucket) -> None:
    a, b = s3.persistence('shared'), s3.persistence('shared')
    for persistence in (a, b):
        persistence.set_graph_types(pad_graph)
    await a.snapshot_node(PadState(2), Pad())
    await b.snapshot_node(PadState(1), Pad())
    added = (await b.load_all())[-1]
    async with a.record_run(added.id):
        pass
    assert [getattr(s, 'status', None) for s in await a.load_all()] == ['created', 'success']


async def test_nothing_to_do_is_confirmed_with_a_conditional_get(s3: S3Bucket) -> None:
    persistence = s3.persistence('idle')
    persistence.set_graph_types(pad_graph)
    await persistence.snapshot_node(PadState(1), Pad())
    assert await persistence.load_next() is not None
    before = persistence.stats.as_dict()
    assert await persistence.load_next() is None
    after = persistence.stats.as_dict()
    assert after['gets'] == before['gets'] + 1 and after['puts'] == before['puts']
    assert after['bytes_received'] == before['bytes_received'], 'unchanged: S3 answered 304, without the body'


async def test_the_same_calls_against_a_file_agree(tmp_path: object) -> None:
    """What the tests above expect is what `FileStatePersistence` does."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    a, b = FileStatePersistence(tmp_path / 'run.json'), FileStatePersistence(tmp_path / 'run.json')
    for persistence in (a, b):
        persistence.set_graph_types(pad_graph)
    await a.snapshot_node(PadState(2), Pad())
    assert await a.load_next() is not None
    await b.snapshot_node(PadState(1), Pad())
    added = await a.load_next()
    assert added is not None and added.state == PadState(1)
    await b.snapshot_node(PadState(0), Pad())
    async with a.record_run((await b.load_all())[-1].id):
        pass
