"""`S3StatePersistence`: pydantic-graph 1.x state persistence in one S3 object per run.

The object holds the snapshot list exactly as `FileStatePersistence` writes its file, so either can read what
the other wrote. Where `FileStatePersistence` takes a lock file and rewrites the whole file, every method here
is one pure change to the snapshot list, applied by the compare-and-swap primitive of the storage layer.

With `reclaim_after` set, node snapshots also carry a claim (`"claim": {"token", "claimed_at", "attempt"}`, a
key `FileStatePersistence` ignores): a worker that died holding a step is replaced once its claim is stale, and
every write that depends on a claim checks, inside its compare-and-swap change, that the claim is still its own.
"""

from __future__ import annotations as _annotations

import copy
import functools
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
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

from pydantic_s3_cas import (
    CasObject,
    CasStats,
    Change,
    ClientSettings,
    RetryPolicy,
    S3PersistenceError,
    ensure_conditional_writes,
    shared_client,
    validate_bucket_name,
)
from pydantic_s3_cas.telemetry import span

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

logger = logging.getLogger('pydantic_graph_s3')

__all__ = (
    'S3StatePersistence',
    'Claim',
    'ClaimLostError',
    'RunRecord',
    'recover_run',
    'run_object_key',
    'validate_run_id',
    'decode_snapshot_list',
)

R = TypeVar('R')
S = TypeVar('S')
Snapshots = list[Snapshot[StateT, RunEndT]]


@dataclass(frozen=True)
class Claim:
    """Who holds a node snapshot's step, since when, and how many claims it has had; stored in the snapshot.

    Written only when `reclaim_after` is set. `token` is unique per claim, so a worker can tell that its claim
    was taken over, and so that no two claims ever write the same bytes. `error` says why a snapshot was marked
    `error` by the reclaim bound (`max_attempts`) rather than by its node.
    """

    token: str
    claimed_at: datetime
    attempt: int = 1
    error: str | None = None


_CLAIM: pydantic.TypeAdapter[Claim] = pydantic.TypeAdapter(Claim)


@dataclass(frozen=True)
class RunRecord:
    """What the object of a run holds: its snapshots, and the claims of its node snapshots by snapshot id.

    Change functions treat it as immutable and return a new one.
    """

    snapshots: list[Snapshot[Any, Any]]
    claims: Mapping[str, Claim] = field(default_factory=dict)

    def with_snapshot(self, index: int, snapshot: Snapshot[Any, Any], claim: Claim | None = None) -> RunRecord:
        """This record with snapshot `index` replaced, and its claim too when one is given."""
        snapshots = [*self.snapshots[:index], snapshot, *self.snapshots[index + 1 :]]
        claims = self.claims if claim is None else {**self.claims, snapshot.id: claim}
        return RunRecord(snapshots, claims)

    def appended(self, snapshot: Snapshot[Any, Any]) -> RunRecord:
        return RunRecord([*self.snapshots, snapshot], self.claims)


class ClaimLostError(S3PersistenceError):
    """Another worker took over this step (its claim went stale), so this worker's write was discarded."""

    def __init__(self, bucket: str, key: str, snapshot_id: str, detail: str) -> None:
        self.snapshot_id = snapshot_id
        super().__init__(
            bucket,
            key,
            f'claim on node snapshot {snapshot_id!r} lost ({detail}); this write was discarded. Nothing to do: the '
            'worker that holds the step now continues the run. If this happens without crashes, raise '
            'reclaim_after above your longest step.',
        )


class _Fenced(Exception):
    """Raised inside a change function when its claim is not current; `_update` turns it into `ClaimLostError`."""

    def __init__(self, snapshot_id: str, detail: str) -> None:
        super().__init__(detail)
        self.snapshot_id = snapshot_id
        self.detail = detail


@dataclass(frozen=True)
class _Finished:
    """A node that ran successfully under a claim: its success is written together with its successor."""

    snapshot_id: str
    token: str
    duration: float


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
    return _snapshot_list_codec(*types).decode(body).snapshots


@dataclass(frozen=True)
class _SnapshotListCodec:
    """Snapshot lists to bytes and back, byte for byte as `FileStatePersistence` does (`indent=2`).

    Claims are one more key, `"claim"`, in the JSON object of their snapshot: pydantic ignores unknown keys when
    validating snapshots, so `FileStatePersistence` still loads the object. A record without claims encodes to
    exactly `FileStatePersistence`'s bytes.
    """

    adapter: pydantic.TypeAdapter[list[Any]]
    node_ids: frozenset[str]

    def decode(self, body: bytes) -> RunRecord:
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
        return RunRecord(snapshots, self._claims(body) if b'"claim"' in body else {})

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

    def _claims(self, body: bytes) -> dict[str, Claim]:
        claims: dict[str, Claim] = {}
        for index, item in enumerate(pydantic_core.from_json(body)):
            if 'claim' in item:
                try:
                    claims[item['id']] = _CLAIM.validate_python(item['claim'])
                except pydantic.ValidationError as e:
                    raise ValueError(f'snapshot {index} has an invalid claim: {e.errors()[0]["msg"]}') from e
        return claims

    def encode(self, value: RunRecord) -> bytes:
        if not value.claims:
            return self.adapter.dump_json(value.snapshots, indent=2)
        items = self.adapter.dump_python(value.snapshots, mode='json')
        for item in items:
            claim = value.claims.get(item['id'])
            if claim is not None:
                item['claim'] = _CLAIM.dump_python(claim, mode='json', exclude_none=True)
        return pydantic_core.to_json(items, indent=2)

    def empty(self) -> RunRecord:
        return RunRecord([])


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
    reclaim_after: timedelta | None = None
    """Let `load_next` take over a node whose claim is older than this, when nothing is `created`; every write
    that depends on a claim is fenced by its token. `None` (the default) keeps pydantic-graph's strict semantics:
    a claimed node whose worker died stays claimed. Set it well above your longest step."""
    max_attempts: int = 3
    """With `reclaim_after`: claims a node snapshot may have (its first and its reclaims); when the last one goes
    stale too, `load_next` marks the snapshot `error` (the reason is in its claim) instead of running it again."""
    verify_endpoint: bool = False
    """Before the first request, prove that the endpoint honours `If-Match` and `If-None-Match` (see
    `verify_conditional_writes`; once per endpoint and bucket per process). Needs s3:DeleteObject on the prefix."""

    _codec: _SnapshotListCodec | None = field(default=None, init=False, repr=False)
    _object: CasObject[RunRecord] | None = field(default=None, init=False, repr=False)
    _held: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _finished: _Finished | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        validate_bucket_name(self.bucket)
        if not self.key:
            raise ValueError('key must be a non-empty object key')
        if self.reclaim_after is not None and self.reclaim_after <= timedelta(0):
            raise ValueError(f'reclaim_after must be positive, got {self.reclaim_after}')
        if self.max_attempts < 1:
            raise ValueError(f'max_attempts must be at least 1, got {self.max_attempts}')

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
            await self._append(snapshot)

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
            await self._append(snapshot)

    def record_run(self, snapshot_id: str) -> AbstractAsyncContextManager[None]:
        """Record the node's run: `running` on entry, `error` if it raises, `success` on exit (with `reclaim_after`:
        together with the successor snapshot that follows, see `_record_claimed_run`)."""
        if self.reclaim_after is None:
            return self._record_run(snapshot_id)
        return self._record_claimed_run(snapshot_id)

    async def load_next(self) -> NodeSnapshot[StateT, RunEndT] | None:
        with self._traced('load_next'):
            if self.reclaim_after is None:
                return await self._update(_claim_next_created)
            token = _new_token()
            claim = partial(_claim_next, token, datetime.now(tz=UTC), self.reclaim_after, self.max_attempts)
            snapshot = await self._update(claim)
            if snapshot is not None:
                self._held[snapshot.id] = token
            return snapshot

    async def load_all(self) -> list[Snapshot[StateT, RunEndT]]:
        with self._traced('load_all'):
            return (await self._cas().load()).snapshots

    async def load_record(self) -> RunRecord:
        """The snapshots and the claims of the run (claims are only written with `reclaim_after`), in one read."""
        with self._traced('load_record'):
            return await self._cas().load()

    async def recover(self) -> list[str]:
        """Make a run whose worker died mid-step runnable again now, without waiting for `reclaim_after`.

        Every node snapshot left `pending` or `running` goes back to `created`, and its claim gets a token that
        nobody holds, so a worker that still held it after all is fenced (`ClaimLostError`) when it uses a claim;
        its attempt count is kept. Returns the ids of the snapshots made runnable. For an operator who knows the
        step's worker is gone: a worker without `reclaim_after` holds no token, and so cannot be fenced.
        """
        if self.should_set_types():
            raise ValueError(f"{self.uri}: recovering a run needs its graph's types: pass the graph (--graph)")
        with self._traced('recover'):
            return await self._update(partial(_release_claims, _new_token(), datetime.now(tz=UTC)))

    def should_set_types(self) -> bool:
        """Whether types need to be set."""
        return self._codec is None

    def set_types(self, state_type: type[StateT], run_end_type: type[RunEndT]) -> None:
        types: tuple[Any, ...] = (state_type, run_end_type, tuple(nodes_type_context.get(())))
        self._codec = _snapshot_list_codec(*types)
        self._object = None

    @asynccontextmanager
    async def _record_run(self, snapshot_id: str) -> AsyncGenerator[None]:
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

    @asynccontextmanager
    async def _record_claimed_run(self, snapshot_id: str) -> AsyncGenerator[None]:
        """`record_run` under a claim: the claim from `load_next`, or a new one on a `created` snapshot.

        The start and an error are written at once; a success is written with the successor snapshot, in one
        write (`_append`), so that no crash can leave a successful node without a successor, and the run's
        history advances exactly once per step.
        """
        await self._flush_finished()
        held = self._held.pop(snapshot_id, None)
        token = held or _new_token()
        with self._traced('record_run', snapshot_id):
            await self._update(partial(_start_claimed_run, snapshot_id, held, token, datetime.now(tz=UTC)))
            logger.info('run %s: snapshot %s running', self.run_id, snapshot_id, extra={'run_id': self.run_id})
            start = perf_counter()
            try:
                yield
            except Exception:
                await self._update(partial(_finish_claimed_run, snapshot_id, token, perf_counter() - start, 'error'))
                logger.info('run %s: snapshot %s error', self.run_id, snapshot_id, extra={'run_id': self.run_id})
                raise
            self._finished = _Finished(snapshot_id, token, perf_counter() - start)

    async def _append(self, snapshot: Snapshot[StateT, RunEndT]) -> None:
        finished, self._finished = self._finished, None
        if finished is None:
            await self._update(partial(_append_if_new, snapshot.id, snapshot))
        else:
            await self._update(partial(_append_successor, finished, snapshot))

    async def _flush_finished(self) -> None:
        # A success that no successor followed (record_run used on its own): written by itself after all.
        finished, self._finished = self._finished, None
        if finished is not None:
            change = partial(_finish_claimed_run, finished.snapshot_id, finished.token, finished.duration, 'success')
            await self._update(change)

    async def _update(self, change: Callable[[RunRecord], Change[RunRecord, R]]) -> R:
        try:
            return await self._cas().update(change)
        except _Fenced as e:
            fenced = e
        # Raised outside the except clause, so that its context is the caller's: the node's error being recorded.
        raise ClaimLostError(self.bucket, self.key, fenced.snapshot_id, fenced.detail)

    def _cas(self) -> CasObject[RunRecord]:
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
                logger=logger,
            )
        return self._object

    async def _client(self) -> S3Client:
        client = self.client if self.client is not None else await shared_client(self.session, self.client_settings)
        if self.verify_endpoint:
            # The probe goes beside the run, where its writes are allowed: the key's prefix ('' at the bucket root).
            prefix = self.key[: self.key.rfind('/') + 1]
            await ensure_conditional_writes(client, self.bucket, prefix, retry=self.retry)
        return client


async def recover_run(persistence: S3StatePersistence[Any, Any]) -> list[str]:
    """`persistence.recover()`: what the `pydantic-graph-s3 runs recover` command calls."""
    return await persistence.recover()


def _detached(snapshot: S) -> S:
    """A copy sharing nothing with the caller, whose graph goes on changing its state and nodes in place.

    The snapshot is built before copying, so that the node's snapshot id is set on the caller's node too.
    """
    return copy.deepcopy(snapshot)


def _new_token() -> str:
    return uuid.uuid4().hex


# The change functions below are pure: they read the record they are given and return a new one, because the
# compare-and-swap loop may call them again on a fresher record after a conflict, and caches the record it
# wrote. What they return to callers is a copy, for the same reason.


def _append_if_new(snapshot_id: str, snapshot: Snapshot[Any, Any], run: RunRecord) -> Change[RunRecord, None]:
    # snapshot_node and snapshot_end go through here too: snapshot ids are unique, so finding ours means an
    # earlier attempt's write landed after all, and appending it again would give its node two successors.
    if any(s.id == snapshot_id for s in run.snapshots):
        return Change(None, None)
    return Change(run.appended(snapshot), None)


def _create_if_empty(snapshot: Snapshot[Any, Any], run: RunRecord) -> Change[RunRecord, Snapshots[Any, Any] | None]:
    if run.snapshots:
        return Change(None, _detached(run.snapshots))
    return Change(run.appended(snapshot), None)


def _claim_next_created(run: RunRecord) -> Change[RunRecord, NodeSnapshot[Any, Any] | None]:
    for index, snapshot in enumerate(run.snapshots):
        if isinstance(snapshot, NodeSnapshot) and snapshot.status == 'created':
            claimed = replace(snapshot, status='pending')
            return Change(run.with_snapshot(index, claimed), _detached(claimed))
    return Change(None, None)


def _start_run(snapshot_id: str, start_ts: datetime, run: RunRecord) -> Change[RunRecord, None]:
    index, snapshot = _find_node_snapshot(run.snapshots, snapshot_id)
    GraphNodeStatusError.check(snapshot.status)
    return Change(run.with_snapshot(index, replace(snapshot, status='running', start_ts=start_ts)), None)


def _finish_run(snapshot_id: str, duration: float, status: SnapshotStatus, run: RunRecord) -> Change[RunRecord, None]:
    index, snapshot = _find_node_snapshot(run.snapshots, snapshot_id)
    return Change(run.with_snapshot(index, replace(snapshot, status=status, duration=duration)), None)


# With reclaim_after: claims and fencing. A claim is current when the snapshot's claim has the caller's token.


def _claim_next(
    token: str, now: datetime, reclaim_after: timedelta, max_attempts: int, run: RunRecord
) -> Change[RunRecord, NodeSnapshot[Any, Any] | None]:
    """Claim the first `created` node snapshot; failing that, take over the first stale claim."""
    nodes = [(i, s) for i, s in enumerate(run.snapshots) if isinstance(s, NodeSnapshot)]
    for _, snapshot in nodes:
        claim = run.claims.get(snapshot.id)
        if claim is not None and claim.token == token and snapshot.status == 'pending':
            return Change(None, _detached(snapshot))  # an earlier attempt's claim landed unseen
    for index, snapshot in nodes:
        if snapshot.status == 'created':
            claimed = replace(snapshot, status='pending')
            released = run.claims.get(snapshot.id)  # by `recover`, which keeps the count
            attempt = 1 if released is None else released.attempt + 1
            return Change(run.with_snapshot(index, claimed, Claim(token, now, attempt)), _detached(claimed))
    for index, snapshot in nodes:
        claim = run.claims.get(snapshot.id)
        # Claims without a token (made by a worker without reclaim_after) cannot be fenced, so are never taken.
        if snapshot.status not in ('pending', 'running') or claim is None or now - claim.claimed_at < reclaim_after:
            continue
        if claim.attempt >= max_attempts:
            reason = (
                f'abandoned: {claim.attempt} claim(s) went stale (none finished within reclaim_after='
                f'{reclaim_after.total_seconds():g}s), max_attempts={max_attempts} reached'
            )
            failed = replace(snapshot, status='error')
            return Change(run.with_snapshot(index, failed, replace(claim, error=reason)), None)
        reclaimed = replace(snapshot, status='pending', start_ts=None)
        next_claim = Claim(token, now, claim.attempt + 1)
        return Change(run.with_snapshot(index, reclaimed, next_claim), _detached(reclaimed))
    return Change(None, None)


def _release_claims(token: str, now: datetime, run: RunRecord) -> Change[RunRecord, list[str]]:
    """Every `pending` or `running` node snapshot back to `created`, under a claim token nobody holds."""
    released: list[str] = []
    for index, snapshot in enumerate(run.snapshots):
        if isinstance(snapshot, NodeSnapshot) and snapshot.status in ('pending', 'running'):
            claim = run.claims.get(snapshot.id)
            revoked = Claim(token, now, attempt=0 if claim is None else claim.attempt)
            run = run.with_snapshot(index, replace(snapshot, status='created', start_ts=None), revoked)
            released.append(snapshot.id)
    return Change(run if released else None, released)


def _start_claimed_run(
    snapshot_id: str, held: str | None, token: str, start_ts: datetime, run: RunRecord
) -> Change[RunRecord, None]:
    """Start a node under the claim `held` (from `load_next`), or under a new claim `token` when none is held."""
    index, snapshot = _find_node_snapshot(run.snapshots, snapshot_id)
    claim = run.claims.get(snapshot_id)
    if claim is not None and claim.token == token:
        if snapshot.status == 'running':
            return Change(None, None)  # an earlier attempt's start landed unseen
        GraphNodeStatusError.check(snapshot.status)
        return Change(run.with_snapshot(index, replace(snapshot, status='running', start_ts=start_ts)), None)
    if held is not None:
        raise _Fenced(snapshot_id, _taken_over(claim))
    GraphNodeStatusError.check(snapshot.status)
    if claim is not None and snapshot.status == 'pending':
        raise _Fenced(snapshot_id, f'it is claimed by another worker (attempt {claim.attempt})')
    attempt = 1 if claim is None else claim.attempt + 1
    started = replace(snapshot, status='running', start_ts=start_ts)
    return Change(run.with_snapshot(index, started, Claim(token, start_ts, attempt)), None)


def _finish_claimed_run(
    snapshot_id: str, token: str, duration: float, status: SnapshotStatus, run: RunRecord
) -> Change[RunRecord, None]:
    index, snapshot = _check_fence(run, snapshot_id, token)
    if snapshot.status == status:
        return Change(None, None)  # an earlier attempt's write landed unseen
    return Change(run.with_snapshot(index, replace(snapshot, status=status, duration=duration)), None)


def _append_successor(finished: _Finished, successor: Snapshot[Any, Any], run: RunRecord) -> Change[RunRecord, None]:
    """Record a node's success and append its successor in one write, if the node's claim is still ours."""
    if any(s.id == successor.id for s in run.snapshots):
        return Change(None, None)  # an earlier attempt's write landed unseen
    index, snapshot = _check_fence(run, finished.snapshot_id, finished.token)
    succeeded = replace(snapshot, status='success', duration=finished.duration)
    return Change(run.with_snapshot(index, succeeded).appended(successor), None)


def _check_fence(run: RunRecord, snapshot_id: str, token: str) -> tuple[int, NodeSnapshot[Any, Any]]:
    index, snapshot = _find_node_snapshot(run.snapshots, snapshot_id)
    claim = run.claims.get(snapshot_id)
    # A claim marked with an error was given up on (max_attempts), even if its token is still ours.
    if claim is None or claim.token != token or claim.error is not None:
        raise _Fenced(snapshot_id, _taken_over(claim))
    return index, snapshot


def _taken_over(claim: Claim | None) -> str:
    if claim is None:
        return 'its claim is gone'
    if claim.error is not None:
        return claim.error
    return f'taken over by attempt {claim.attempt} at {claim.claimed_at.isoformat()}'


def _find_node_snapshot(snapshots: Snapshots[Any, Any], snapshot_id: str) -> tuple[int, NodeSnapshot[Any, Any]]:
    for index, snapshot in enumerate(snapshots):
        if snapshot.id == snapshot_id:
            if not isinstance(snapshot, NodeSnapshot):
                raise TypeError(f'snapshot {snapshot_id!r} is an end snapshot: only node snapshots can be recorded')
            return index, snapshot
    raise LookupError(f'No snapshot found with id={snapshot_id!r}')
