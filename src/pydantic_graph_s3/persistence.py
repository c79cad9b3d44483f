"""`S3StatePersistence`: pydantic-graph 1.x state persistence in one S3 object per run.

The object holds the snapshot list exactly as `FileStatePersistence` writes its file, so either can read what
the other wrote. Where `FileStatePersistence` takes a lock file and rewrites the whole file, every method here
is one pure change to the snapshot list, applied by the compare-and-swap primitive of the storage layer.
"""

from __future__ import annotations as _annotations

import copy
import functools
import re
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import PurePosixPath
from time import perf_counter
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aioboto3
import pydantic
import pydantic_core
from pydantic_graph import BaseNode, End
from pydantic_graph.exceptions import GraphNodeStatusError
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import (
    BaseStatePersistence,
    EndSnapshot,
    NodeSnapshot,
    RunEndT,
    Snapshot,
    SnapshotStatus,
    StateT,
    build_snapshot_list_type_adapter,
)
from pydantic_graph.persistence._utils import nodes_type_context, set_nodes_type_context

from .storage import CasObject, CasStats, Change, ClientSettings, RetryPolicy, shared_client
from .storage.telemetry import logger, span

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ('S3StatePersistence', 'run_object_key', 'validate_run_id', 'decode_snapshot_list')

R = TypeVar('R')
S = TypeVar('S')
Snapshots = list[Snapshot[StateT, RunEndT]]

_RUN_ID = re.compile(r'[A-Za-z0-9._=-]{1,200}')


def validate_run_id(run_id: str) -> str:
    """Return `run_id` if it is safe as the last part of an object key, else raise `ValueError`.

    1 to 200 characters of `[A-Za-z0-9._=-]`, and not `.` or `..`: no slashes, so a run id can never reach
    outside its prefix or collide with another run's key.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id in {'.', '..'}:
        raise ValueError(
            f'invalid run id {run_id!r}: use 1 to 200 characters of letters, digits, ".", "_", "=" and "-" '
            '(not "." or "..")'
        )
    return run_id


def run_object_key(prefix: str, run_id: str) -> str:
    """The object key of a run: `{prefix}{run_id}.json`."""
    return f'{prefix}{validate_run_id(run_id)}.json'


@functools.lru_cache(maxsize=256)
def _snapshot_list_codec(
    state_type: type[Any], run_end_type: type[Any], node_types: tuple[type[BaseNode[Any, Any, Any]], ...]
) -> _SnapshotListCodec:
    """One codec per graph and types, shared by all instances.

    Building the pydantic schema costs milliseconds, about as much as an S3 request, and the pattern of one
    persistence object per step would otherwise pay it on every step.
    """
    with set_nodes_type_context(node_types):
        adapter = build_snapshot_list_type_adapter(state_type, run_end_type)
    return _SnapshotListCodec(adapter, frozenset(node.get_node_id() for node in node_types))


def decode_snapshot_list(body: bytes, graph: Graph[Any, Any, Any]) -> list[Snapshot[Any, Any]]:
    """What `load_all` returns for a run stored as `body`, decoded with `graph`'s types.

    Raises `ValueError` when `body` is not a snapshot list of this graph (as `CorruptObjectError` says).
    """
    types: tuple[Any, ...] = (*graph.inferred_types, tuple(graph.get_nodes()))
    return _snapshot_list_codec(*types).decode(body)


@dataclass(frozen=True)
class _SnapshotListCodec:
    """Snapshot lists to bytes and back, byte for byte as `FileStatePersistence` does (`indent=2`)."""

    adapter: pydantic.TypeAdapter[list[Any]]
    node_ids: frozenset[str]

    def decode(self, body: bytes) -> list[Any]:
        try:
            snapshots = self.adapter.validate_json(body)
        except pydantic.ValidationError as e:
            errors = e.errors(include_url=False)
            first = errors[0]
            where = '.'.join(str(part) for part in first['loc']) or 'top level'
            raise ValueError(f'{len(errors)} validation error(s); at {where}: {first["msg"]}') from e
        except (TypeError, AttributeError, KeyError) as e:  # a node that is not an object trips the discriminator
            raise ValueError(f'not a snapshot list: {type(e).__name__}: {e}') from e
        if len(self.node_ids) == 1:
            self._check_node_ids(body)
        return snapshots

    def _check_node_ids(self, body: bytes) -> None:
        # pydantic-graph only discriminates on node_id when a graph has several node types: with one, any
        # node_id validates, and another graph's run would be taken for ours and overwritten.
        for index, item in enumerate(pydantic_core.from_json(body)):
            node = item.get('node') if item.get('kind') == 'node' else None
            if node is not None and node.get('node_id') not in self.node_ids:
                raise ValueError(
                    f'snapshot {index} is of node {node.get("node_id")!r}, which is not in this graph '
                    f'(nodes: {", ".join(sorted(self.node_ids))})'
                )

    def encode(self, value: list[Any]) -> bytes:
        return self.adapter.dump_json(value, indent=2)

    def empty(self) -> list[Any]:
        return []


@dataclass
class S3StatePersistence(BaseStatePersistence[StateT, RunEndT]):
    """State persistence that keeps a graph run in one S3 object, changed only by compare-and-swap.

    Use one instance per run, or a new instance per step (as separate Lambda invocations do): instances on one
    event loop share an S3 client, and several processes can work on the same run at once without a lock, as
    S3 lets exactly one of two conditional writes of the same version succeed.

    ```py
    persistence = S3StatePersistence.for_run(run_id, bucket='my-bucket', prefix='graph-runs/')
    ```
    """

    bucket: str
    """The bucket holding the run."""
    key: str
    """The object key of the run; `for_run` makes it `{prefix}{run_id}.json`."""
    client: S3Client | None = field(default=None, repr=False)
    """An S3 client to use, managed by the caller. Default: the shared client of the running event loop."""
    session: aioboto3.Session | None = field(default=None, repr=False)
    """The session the shared client is created from. Default: the standard AWS credential chain and config."""
    client_settings: ClientSettings = field(default_factory=ClientSettings)
    """Timeouts and pool size of the shared client (ignored when `client` is given)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Bounds on retrying conflicts and transient failures of one call."""
    max_object_bytes: int | None = 64 * 1024 * 1024
    """Refuse to download a larger object (checked on `ContentLength`, before the body is read)."""

    _codec: _SnapshotListCodec | None = field(default=None, init=False, repr=False)
    _object: CasObject[Snapshots[StateT, RunEndT]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError('bucket must be a non-empty bucket name')
        if not self.key:
            raise ValueError('key must be a non-empty object key')

    @classmethod
    def for_run(cls, run_id: str, *, bucket: str, prefix: str = '', **options: Any) -> Self:
        """The persistence of run `run_id`, stored at `s3://{bucket}/{prefix}{run_id}.json`.

        Raises `ValueError` before any request when `run_id` is not a safe key part (see `validate_run_id`).
        """
        return cls(bucket=bucket, key=run_object_key(prefix, run_id), **options)

    @property
    def uri(self) -> str:
        return f's3://{self.bucket}/{self.key}'

    @property
    def run_id(self) -> str:
        """The run id this object's key names (`{prefix}{run_id}.json`), as log records and spans show it."""
        return PurePosixPath(self.key).name.removesuffix('.json')

    @property
    def stats(self) -> CasStats:
        """Requests, conflicts, retries and bytes this instance has cost so far."""
        return self._cas().stats

    async def snapshot_node(self, state: StateT, next_node: BaseNode[StateT, Any, RunEndT]) -> None:
        snapshot = _detached(NodeSnapshot(state=state, node=next_node))
        with self._traced('snapshot_node', snapshot.id):
            await self._update(partial(_append_if_new, snapshot.id, snapshot))

    async def snapshot_node_if_new(
        self, snapshot_id: str, state: StateT, next_node: BaseNode[StateT, Any, RunEndT]
    ) -> None:
        snapshot = _detached(NodeSnapshot(state=state, node=next_node))
        with self._traced('snapshot_node_if_new', snapshot_id):
            await self._update(partial(_append_if_new, snapshot_id, snapshot))

    async def initialize_run(
        self, state: StateT, node: BaseNode[StateT, Any, RunEndT]
    ) -> list[Snapshot[StateT, RunEndT]] | None:
        """Create the run with `node` as its first snapshot, as `Graph.initialize` does, unless it already exists.

        Returns `None` when this call created the run, else the existing run's snapshots, which are left as they
        are: `Graph.initialize` appends, so a retried or duplicated start would add a second first node. The
        write is create-only (`IfNoneMatch='*'`, no GET first), so of concurrent starts exactly one creates.
        """
        snapshot = _detached(NodeSnapshot(state=state, node=node))
        return await self._cas().update(partial(_create_if_empty, snapshot), expect_missing=True)

    async def snapshot_end(self, state: StateT, end: End[RunEndT]) -> None:
        snapshot = _detached(EndSnapshot(state=state, result=end))
        with self._traced('snapshot_end', snapshot.id):
            await self._update(partial(_append_if_new, snapshot.id, snapshot))

    @asynccontextmanager
    async def record_run(self, snapshot_id: str) -> AsyncGenerator[None]:
        # One span around the node's execution too, so that the node's own spans nest under it.
        with self._traced('record_run', snapshot_id):
            await self._update(partial(_start_run, snapshot_id, datetime.now(tz=UTC)))
            logger.info('run %s: snapshot %s running', self.run_id, snapshot_id, extra={'run_id': self.run_id})
            start = perf_counter()
            try:
                yield
            except Exception:
                await self._finish(snapshot_id, perf_counter() - start, 'error')
                raise
            else:
                await self._finish(snapshot_id, perf_counter() - start, 'success')

    async def load_next(self) -> NodeSnapshot[StateT, RunEndT] | None:
        with self._traced('load_next'):
            return await self._update(_claim_next_created)

    async def load_all(self) -> list[Snapshot[StateT, RunEndT]]:
        with self._traced('load_all'):
            return await self._cas().load()

    def should_set_types(self) -> bool:
        """Whether types need to be set."""
        return self._codec is None

    def set_types(self, state_type: type[StateT], run_end_type: type[RunEndT]) -> None:
        types: tuple[Any, ...] = (state_type, run_end_type, tuple(nodes_type_context.get(())))
        self._codec = _snapshot_list_codec(*types)
        self._object = None

    async def _finish(self, snapshot_id: str, duration: float, status: SnapshotStatus) -> None:
        await self._update(partial(_finish_run, snapshot_id, duration, status))
        logger.info('run %s: snapshot %s %s', self.run_id, snapshot_id, status, extra={'run_id': self.run_id})

    @contextmanager
    def _traced(self, method: str, snapshot_id: str | None = None) -> Iterator[None]:
        """One span and one DEBUG record per persistence call, with its outcome."""
        attributes = {'bucket': self.bucket, 'key': self.key, 'run_id': self.run_id, 'snapshot_id': snapshot_id or ''}
        with span('persistence {method} {run_id}', method=method, **attributes) as call_span:
            outcome = 'ok'
            try:
                yield
            except BaseException as e:
                outcome = f'error: {type(e).__name__}'
                raise
            finally:
                call_span.set_attribute('outcome', outcome)
                logger.debug('run %s: %s %s', self.run_id, method, outcome, extra={'run_id': self.run_id})

    async def _update(self, change: Callable[[Snapshots[StateT, RunEndT]], Change[Snapshots[StateT, RunEndT], R]]) -> R:
        return await self._cas().update(change)

    def _cas(self) -> CasObject[Snapshots[StateT, RunEndT]]:
        if self._object is None:
            if self._codec is None:
                raise RuntimeError(
                    f'{self.uri}: snapshot types are not set. Pass this persistence to a Graph method '
                    '(run, iter, iter_from_persistence, initialize), or call set_graph_types(graph) first.'
                )
            self._object = CasObject(
                bucket=self.bucket,
                key=self.key,
                codec=self._codec,
                client=self._client,
                retry=self.retry,
                max_object_bytes=self.max_object_bytes,
                labels={'run_id': self.run_id},
            )
        return self._object

    async def _client(self) -> S3Client:
        if self.client is not None:
            return self.client
        return await shared_client(self.session, self.client_settings)


def _detached(snapshot: S) -> S:
    """A copy sharing nothing with the caller, whose graph goes on changing its state and nodes in place.

    The snapshot is built before copying, so that the node's snapshot id is set on the caller's node too.
    """
    return copy.deepcopy(snapshot)


# The change functions below are pure: they read the snapshot list they are given and return a new one,
# because the compare-and-swap loop may call them again on a fresher list after a conflict, and caches the
# list it wrote. What they return to callers is a copy, for the same reason.


def _append_if_new(
    snapshot_id: str, snapshot: Snapshot[Any, Any], snapshots: Snapshots[Any, Any]
) -> Change[Snapshots[Any, Any], None]:
    # snapshot_node and snapshot_end go through here too: snapshot ids are unique, so finding ours means an
    # earlier attempt's write landed after all, and appending it again would give its node two successors.
    if any(s.id == snapshot_id for s in snapshots):
        return Change(None, None)
    return Change([*snapshots, snapshot], None)


def _create_if_empty(
    snapshot: Snapshot[Any, Any], snapshots: Snapshots[Any, Any]
) -> Change[Snapshots[Any, Any], Snapshots[Any, Any] | None]:
    if snapshots:
        return Change(None, _detached(snapshots))
    return Change([snapshot], None)


def _claim_next_created(
    snapshots: Snapshots[Any, Any],
) -> Change[Snapshots[Any, Any], NodeSnapshot[Any, Any] | None]:
    for index, snapshot in enumerate(snapshots):
        if isinstance(snapshot, NodeSnapshot) and snapshot.status == 'created':
            claimed = replace(snapshot, status='pending')
            return Change(_replaced(snapshots, index, claimed), _detached(claimed))
    return Change(None, None)


def _start_run(
    snapshot_id: str, start_ts: datetime, snapshots: Snapshots[Any, Any]
) -> Change[Snapshots[Any, Any], None]:
    index, snapshot = _find_node_snapshot(snapshots, snapshot_id)
    GraphNodeStatusError.check(snapshot.status)
    return Change(_replaced(snapshots, index, replace(snapshot, status='running', start_ts=start_ts)), None)


def _finish_run(
    snapshot_id: str, duration: float, status: SnapshotStatus, snapshots: Snapshots[Any, Any]
) -> Change[Snapshots[Any, Any], None]:
    index, snapshot = _find_node_snapshot(snapshots, snapshot_id)
    return Change(_replaced(snapshots, index, replace(snapshot, status=status, duration=duration)), None)


def _find_node_snapshot(snapshots: Snapshots[Any, Any], snapshot_id: str) -> tuple[int, NodeSnapshot[Any, Any]]:
    for index, snapshot in enumerate(snapshots):
        if snapshot.id == snapshot_id:
            if not isinstance(snapshot, NodeSnapshot):
                raise TypeError(f'snapshot {snapshot_id!r} is an end snapshot: only node snapshots can be recorded')
            return index, snapshot
    raise LookupError(f'No snapshot found with id={snapshot_id!r}')


def _replaced(snapshots: Snapshots[Any, Any], index: int, snapshot: Snapshot[Any, Any]) -> Snapshots[Any, Any]:
    return [*snapshots[:index], snapshot, *snapshots[index + 1 :]]
