"""Every JSON layout that `FileStatePersistence` reads keeps working once imported (issue #19, items 3 and 4).

A file indented by 0, 3 or 4 spaces or tabs, with CRLF line ends, on one line, or with members written compactly,
is imported, then taken through an operator's state update, a claim, a stale claim taken over, worker steps that
seal history, and an export, which `FileStatePersistence` must load.
"""

from __future__ import annotations as _annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_graph import End
from pydantic_graph.persistence.file import FileStatePersistence

from pydantic_graph_s3 import RunStore
from pydantic_graph_s3.layout import decode_head

from .conftest import FRESH, S3Bucket
from .test_long_runs import PAD, Pad, PadState, pad_graph, step_fresh

pytestmark = pytest.mark.anyio


def _compact_members(value: Any) -> str:
    """The list at indent 2, each snapshot's members one per line, but `state` and `claim` each on one line."""
    lines = []
    for item in value:
        members = []
        for key, member in item.items():
            rendered = json.dumps(member) if key in ('state', 'claim') else json.dumps(member, indent=2)
            members.append(f'    {json.dumps(key)}: ' + rendered.replace('\n', '\n    '))
        lines.append('  {\n' + ',\n'.join(members) + '\n  }')
    return '[\n' + ',\n'.join(lines) + '\n]'


LAYOUTS: dict[str, Callable[[Any], str]] = {
    'indent-0': lambda v: json.dumps(v, indent=0),
    'indent-2': lambda v: json.dumps(v, indent=2),
    'indent-3': lambda v: json.dumps(v, indent=3),
    'indent-4': lambda v: json.dumps(v, indent=4),
    'tabs': lambda v: json.dumps(v, indent='\t'),
    'crlf': lambda v: json.dumps(v, indent=2).replace('\n', '\r\n') + '\r\n',
    'crlf-indent-4': lambda v: json.dumps(v, indent=4).replace('\n', '\r\n'),
    'one-line': lambda v: json.dumps(v, separators=(',', ':')),
    'compact-members': _compact_members,
}


async def _source_file(s3: S3Bucket, tmp_path: Path, pad: int) -> bytes:
    """A run's file: three steps run under claims, then a fourth claimed and recovered (`created`, with a claim)."""
    await pad_graph.initialize(Pad(), state=PadState(8, 'x' * pad), persistence=s3.persistence('source'))
    for _ in range(3):
        await step_fresh(s3, 'source', reclaim_after=FRESH)
    persistence = s3.persistence('source', reclaim_after=FRESH)
    persistence.set_graph_types(pad_graph)
    assert await persistence.load_next() is not None
    assert len(await persistence.recover()) == 1
    await RunStore(s3.bucket, 'runs/', **s3.options()).export_run('source', tmp_path / 'source.json')
    return (tmp_path / 'source.json').read_bytes()


async def _load_file(path: Path) -> list[Any]:
    file = FileStatePersistence(path)
    file.set_graph_types(pad_graph)
    return await file.load_all()


@pytest.mark.parametrize('pad', [PAD, 10], ids=['sealed-at-import', 'short'])
async def test_every_layout_file_persistence_reads_works_after_import(s3: S3Bucket, tmp_path: Path, pad: int) -> None:
    """A long file is stored segmented at once (its head re-rendered); a short one is stored as it is."""
    source = await _source_file(s3, tmp_path, pad)
    expected = await _load_file(tmp_path / 'source.json')
    store = RunStore(s3.bucket, 'runs/', **s3.options())
    failures = {}
    for name, layout in LAYOUTS.items():
        try:
            await _through_every_operation(s3, store, tmp_path, name, layout(json.loads(source)), expected, pad)
        except Exception as e:  # every layout is tried, and the report names each one that failed
            failures[name] = f'{type(e).__name__}: {e}'
    assert not failures, failures


async def _through_every_operation(
    s3: S3Bucket, store: RunStore, tmp_path: Path, name: str, text: str, expected: list[Any], pad: int
) -> None:
    path = tmp_path / f'{name}.json'
    path.write_bytes(text.encode())
    assert await _load_file(path) == expected, 'FileStatePersistence reads the layout'
    await store.import_run(path, name, pad_graph)

    # An operator corrects the waiting snapshot's state, at the version they saw.
    summary = await store.get_run(name)
    await store.update_state(name, PadState(2, 'y' * pad), graph=pad_graph, etag=summary.etag)
    # A worker claims the step and dies; its claim goes stale and another worker takes the step over.
    claimer = s3.persistence(name, reclaim_after=FRESH)
    claimer.set_graph_types(pad_graph)
    claimed = await claimer.load_next()
    assert claimed is not None and claimed.state == PadState(2, 'y' * pad)
    await s3.backdate_claims(f'runs/{name}.json')
    steps = 0
    while not isinstance(await step_fresh(s3, name, reclaim_after=FRESH), End):
        steps += 1
    assert steps == 2

    head = decode_head((await s3.get(f'runs/{name}.json'))[0])
    assert head.segmented == (pad == PAD), 'long history was sealed'
    await store.export_run(name, tmp_path / f'{name}-out.json')
    history = await _load_file(tmp_path / f'{name}-out.json')
    assert [s.state.counter for s in history] == [8, 7, 6, 2, 1, 0, 0]
    assert [getattr(s, 'status', 'end') for s in history] == ['success'] * 6 + ['end']
    assert history[:3] == expected[:3], 'the imported history is kept'


async def test_a_stale_one_line_claim_is_taken_over(s3: S3Bucket) -> None:
    """A claim written compactly (`"claim": {...}` on one line) is patched where it is, not searched for by lines."""
    await pad_graph.initialize(Pad(), state=PadState(1), persistence=s3.persistence('compact'))
    first = s3.persistence('compact', reclaim_after=FRESH)
    first.set_graph_types(pad_graph)
    assert await first.load_next() is not None
    await s3.put('runs/compact.json', _compact_members(json.loads((await s3.get('runs/compact.json'))[0])).encode())
    await s3.backdate_claims('runs/compact.json')

    second = s3.persistence('compact', reclaim_after=FRESH)
    second.set_graph_types(pad_graph)
    assert await second.load_next() is not None
    record = await second.load_record()
    (claim,) = record.claims.values()
    assert claim.attempt == 2 and [s.state for s in record.snapshots] == [PadState(1)]
