"""A run's history as rows: every snapshot's id, node, status, times and state, with or without the graph's types.

Without the graph, a run is read as plain JSON checked only for the shape every snapshot list has, so an operator
can look at any run; with it, every snapshot is decoded with the graph's types, which also proves the run is
that graph's.
"""

from __future__ import annotations as _annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic_core
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot, Snapshot

from pydantic_s3_cas import CorruptObjectError

from .persistence import decode_snapshot_list, run_object_key
from .run_objects import RunObjects
from .time_travel import CopyOf, copy_of, is_superseded

__all__ = ('SnapshotRow', 'RunHistory', 'read_history', 'raw_rows')


@dataclass(frozen=True)
class SnapshotRow:
    """One snapshot, in JSON-ready values: the same fields with or without the graph's types."""

    id: str
    kind: str
    node: str | None
    """The node id (`None` for the end snapshot)."""
    status: str
    """The node snapshot's status, or `end`."""
    start: datetime | None
    """When the node started running (for the end snapshot: when the run ended)."""
    duration: float | None
    state: Any
    result: Any = None
    """The run's result (end snapshot only)."""
    claimed_at: datetime | None = None
    """When a worker claimed the node snapshot, when its claim records it (written with `reclaim_after`)."""
    copy_of: CopyOf | None = None
    """The snapshot this one is a copy of, when a fork or a rollback made it."""
    superseded: bool = False
    """Marked `error` by a rollback that continued from an earlier snapshot, not by a failure of its own."""


@dataclass(frozen=True)
class RunHistory:
    run_id: str
    key: str
    etag: str
    snapshots: list[SnapshotRow]
    decoded_with: str | None = None
    """The graph whose types decoded the run, or `None` for raw JSON."""

    @property
    def ended(self) -> bool:
        return bool(self.snapshots) and self.snapshots[-1].kind == 'end'

    @property
    def result(self) -> Any:
        return self.snapshots[-1].result if self.ended else None


async def read_history(objects: RunObjects, run_id: str, graph: Graph[Any, Any, Any] | None) -> RunHistory:
    """See `RunStore.history`."""
    key = run_object_key(objects.prefix, run_id)
    head_body, etag = await objects.read(key)
    body = await objects.assemble(key, head_body)
    try:
        rows = raw_rows(body)
        if graph is not None:
            typed = decode_snapshot_list(body, graph)
            rows = [_typed_row(snapshot, raw) for snapshot, raw in zip(typed, rows, strict=True)]
    except ValueError as e:
        raise CorruptObjectError(objects.bucket, key, str(e).splitlines()[0]) from e
    return RunHistory(run_id, key, etag, rows, None if graph is None else graph.name or type(graph).__name__)


def raw_rows(body: bytes) -> list[SnapshotRow]:
    """The snapshots of a stored run as plain JSON, checked only for the shape every snapshot list has."""
    try:
        items = pydantic_core.from_json(body)
    except ValueError as e:
        raise ValueError(f'not JSON: {e}') from e
    if not isinstance(items, list):
        raise ValueError(f'not a snapshot list: the top level is a {type(items).__name__}')
    return [_raw_row(index, item) for index, item in enumerate(items)]


def _raw_row(index: int, item: Any) -> SnapshotRow:
    kind = item.get('kind') if isinstance(item, dict) else None
    if kind == 'node' and isinstance(item.get('node'), dict):
        return SnapshotRow(
            id=str(item.get('id')),
            kind='node',
            node=str(item['node'].get('node_id')),
            status=str(item.get('status')),
            start=_timestamp(item.get('start_ts')),
            duration=item.get('duration'),
            state=item.get('state'),
            claimed_at=_timestamp(claim.get('claimed_at')) if isinstance(claim := item.get('claim'), dict) else None,
            copy_of=copy_of(item),
            superseded=isinstance(claim, dict) and is_superseded(claim.get('error')),
        )
    if kind == 'end' and isinstance(item.get('result'), dict):
        return SnapshotRow(
            id=str(item.get('id')),
            kind='end',
            node=None,
            status='end',
            start=_timestamp(item.get('ts')),
            duration=None,
            state=item.get('state'),
            result=item['result'].get('data'),
        )
    raise ValueError(f'snapshot {index} is not a node or end snapshot')


def _typed_row(snapshot: Snapshot[Any, Any], raw: SnapshotRow) -> SnapshotRow:
    """The row of a snapshot decoded with the graph's types; what only the raw JSON holds comes from `raw`."""
    state = pydantic_core.to_jsonable_python(snapshot.state)
    if isinstance(snapshot, NodeSnapshot):
        node = snapshot.node.get_node_id()
        return SnapshotRow(
            snapshot.id,
            'node',
            node,
            snapshot.status,
            snapshot.start_ts,
            snapshot.duration,
            state,
            claimed_at=raw.claimed_at,
            copy_of=raw.copy_of,
            superseded=raw.superseded,
        )
    assert isinstance(snapshot, EndSnapshot)
    result = pydantic_core.to_jsonable_python(snapshot.result.data)
    return SnapshotRow(snapshot.id, 'end', None, 'end', snapshot.ts, None, state, result)


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
