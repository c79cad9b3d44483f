"""`S3StatePersistence`: pydantic-graph 1.x state persistence in S3, one compare-and-swap point per run.

A run is a head object, `{prefix}{run_id}.json`, plus immutable segments of finished history once it has grown
(see `layout`). A short run's head is exactly the file `FileStatePersistence` writes; `RunStore.export_run`
assembles that file for any run. Where `FileStatePersistence` takes a lock file and rewrites the whole file,
every method here is one pure change to the head (see `changes`), applied by the compare-and-swap primitive of
the storage layer, and a change rewrites only the snapshots it touches: the bytes of every other snapshot stay
as they were stored.

With `reclaim_after` set, node snapshots also carry a claim (`"claim": {"token", "claimed_at", "attempt"}`, a
key `FileStatePersistence` ignores): a worker that died holding a step is replaced once its claim is stale, and
every write that depends on a claim checks, inside its compare-and-swap change, that the claim is still its own.
Claims are stamped and judged by the S3 endpoint's clock (`CasObject.server_now`), not the worker's.
"""

from __future__ import annotations as _annotations

import functools
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aioboto3
from pydantic_graph import BaseNode, End
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import (
    BaseStatePersistence,
    EndSnapshot,
    NodeSnapshot,
    RunEndT,
    Snapshot,
    StateT,
    build_snapshot_list_type_adapter,
)
from pydantic_graph.persistence._utils import nodes_type_context, set_nodes_type_context

from pydantic_s3_cas import (
    CasObject,
    CasStats,
    Change,
    ClientSettings,
    CorruptObjectError,
    RetryPolicy,
    S3PersistenceError,
    ensure_conditional_writes,
    quoted,
    shared_client,
    validate_bucket_name,
    validate_prefix,
)
from pydantic_s3_cas.cas import CLOCK_TOLERANCE
from pydantic_s3_cas.telemetry import span

from . import changes
from .changes import Fenced, Finished, HeadCodec, NeedSealed, RunContext, Sealed, SnapshotTypes
from .layout import RUN_ID_PATTERN, Claim, Element, RunHead, decode_head, decode_segment, segment_key

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
    'validate_prefix',
    'UnfencedClaimError',
    'decode_snapshot_list',
)

R = TypeVar('R')
Snapshots = list[Snapshot[StateT, RunEndT]]


@dataclass(frozen=True)
class RunRecord:
    """A run's whole history as `load_record` reads it: its snapshots, and the claims of its node snapshots."""

    snapshots: list[Snapshot[Any, Any]]
    claims: Mapping[str, Claim] = field(default_factory=dict)


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


class UnfencedClaimError(S3PersistenceError):
    """`recover` refused: a step is claimed by a worker without `reclaim_after`, whose claim has no token."""

    def __init__(self, bucket: str, key: str, snapshot_ids: list[str]) -> None:
        self.snapshot_ids = snapshot_ids
        super().__init__(
            bucket,
            key,
            f'not recovered: node snapshot(s) {", ".join(snapshot_ids)} are claimed by a worker running without '
            'reclaim_after, whose claim carries no token, so it cannot be fenced: if it is only slow, not dead, it '
            'will write its successor too and the run forks into two branches. Nothing was changed. Recover anyway '
            '(recover(force=True), runs recover --force) only when you know that worker is gone.',
        )


_RUN_ID = re.compile(RUN_ID_PATTERN)


def validate_run_id(run_id: str) -> str:
    """Return `run_id` if it is safe as the last part of an object key, else raise `ValueError`.

    1 to 200 characters of `[A-Za-z0-9._=-]`, and not `.` or `..`: no slashes, so a run id can never reach
    outside its prefix or collide with another run's key.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id in {'.', '..'}:
        raise ValueError(
            f'invalid run id {quoted(run_id)}: use 1 to 200 characters of letters, digits, ".", "_", "=" and "-" '
            '(not "." or "..")'
        )
    return run_id


def run_object_key(prefix: str, run_id: str) -> str:
    """The object key of a run: `{prefix}{run_id}.json`."""
    return f'{validate_prefix(prefix)}{validate_run_id(run_id)}.json'


@functools.lru_cache(maxsize=256)
def _snapshot_types(
    state_type: type[Any], run_end_type: type[Any], node_types: tuple[type[BaseNode[Any, Any, Any]], ...]
) -> SnapshotTypes:
    """One adapter per graph and types, shared by all instances.

    Building the pydantic schema costs milliseconds, about as much as an S3 request, and the pattern of one
    persistence object per step would otherwise pay it on every step.
    """
    with set_nodes_type_context(node_types):
        adapter = build_snapshot_list_type_adapter(state_type, run_end_type)
    return SnapshotTypes(adapter, frozenset(node.get_node_id() for node in node_types))


def graph_types(graph: Graph[Any, Any, Any]) -> SnapshotTypes:
    types: tuple[Any, ...] = (*graph.inferred_types, tuple(graph.get_nodes()))
    return _snapshot_types(*types)


def decode_snapshot_list(body: bytes, graph: Graph[Any, Any, Any]) -> list[Snapshot[Any, Any]]:
    """The snapshots of a File-format snapshot list `body` (a file, a single-form head or an assembled export),
    decoded with `graph`'s types.

    Raises `ValueError` when `body` is not a snapshot list of this graph (as `CorruptObjectError` says).
    """
    types = graph_types(graph)
    head = decode_head(body)
    if head.segmented:
        raise ValueError('a segmented run head, not a snapshot list: export the run to assemble its history')
    elements = head.snapshots
    types.check_nodes(elements)
    return types.snapshots(elements)


@dataclass
class S3StatePersistence(BaseStatePersistence[StateT, RunEndT]):
    """State persistence that keeps a graph run in S3: a head object changed only by compare-and-swap, plus
    immutable segments of finished history once the run grows (see `layout`).

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
    """Refuse to download a larger object (checked on `ContentLength`, before the body is read), and to write
    one (checked before sending): `ObjectTooLargeError` either way."""
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

    _snapshot_types: SnapshotTypes | None = field(default=None, init=False, repr=False)
    _object: CasObject[RunHead] | None = field(default=None, init=False, repr=False)
    _sealed: Sealed = field(default_factory=Sealed, init=False, repr=False)
    _held: dict[str, Held] = field(default_factory=dict, init=False, repr=False)
    _finished: Finished | None = field(default=None, init=False, repr=False)

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
        return self.key.rpartition('/')[2].removesuffix('.json')

    @property
    def stats(self) -> CasStats:
        """Requests, conflicts, retries and bytes this instance has cost so far."""
        return self._cas().stats

    async def snapshot_node(self, state: StateT, next_node: BaseNode[StateT, Any, RunEndT]) -> None:
        # Rendered to bytes before any await: what is stored shares nothing with the caller, whose graph goes on
        # changing its state and nodes in place, with no copy of them. Building the snapshot sets the node's id.
        element = self._types().element(NodeSnapshot(state=state, node=next_node))
        with self._traced('snapshot_node', element.id):
            await self._append(element)

    async def snapshot_node_if_new(
        self, snapshot_id: str, state: StateT, next_node: BaseNode[StateT, Any, RunEndT]
    ) -> None:
        element = self._types().element(NodeSnapshot(state=state, node=next_node))
        with self._traced('snapshot_node_if_new', snapshot_id):
            await self._flush_finished()
            await self._update(lambda ctx: partial(changes.append_if_new, ctx, element, True))

    async def initialize_run(
        self, state: StateT, node: BaseNode[StateT, Any, RunEndT]
    ) -> list[Snapshot[StateT, RunEndT]] | None:
        """Create the run with `node` as its first snapshot, as `Graph.initialize` does, unless it already exists.

        Returns `None` when this call created the run, else the existing run's snapshots, which are left as they
        are: `Graph.initialize` appends, so a retried or duplicated start would add a second first node. The
        write is create-only (`IfNoneMatch='*'`, no GET first), so of concurrent starts exactly one creates.
        """
        element = self._types().element(NodeSnapshot(state=state, node=node))
        create = partial(changes.create_if_empty, self._context(), element)
        existing = await self._cas().update(create, expect_missing=True)
        if existing is None:
            return None
        return (await self._history(existing)).snapshots

    async def snapshot_end(self, state: StateT, end: End[RunEndT]) -> None:
        element = self._types().element(EndSnapshot(state=state, result=end))
        with self._traced('snapshot_end', element.id):
            await self._append(element)

    def record_run(self, snapshot_id: str) -> AbstractAsyncContextManager[None]:
        """Record the node's run: `running` on entry and `error` at once if it raises; its `success` is written
        together with the successor snapshot that follows (`snapshot_node` or `snapshot_end`), in one write, so
        no failure can leave a successful node without a successor. Used alone, the success is written by the
        next call of this instance.

        On the instance whose `load_next` handed out the node, entry writes nothing: that write claimed the node
        and started it (`running`) already."""
        return self._record_run(snapshot_id)

    async def load_next(self) -> NodeSnapshot[StateT, RunEndT] | None:
        """Claim the next node to run and start it, in one write: the snapshot is `running` from here (not
        `pending`, as `FileStatePersistence` leaves it until `record_run`), held by this instance, whose
        `record_run` then writes nothing on entry. No other caller can claim or start it (`GraphNodeStatusError`)
        unless `reclaim_after` passes with no outcome written."""
        with self._traced('load_next'):
            await self._flush_finished()
            since, start_ts = monotonic(), datetime.now(tz=UTC)
            token: str | None = None
            if self.reclaim_after is None:
                snapshot = await self._update(lambda ctx: partial(changes.claim_next_created, ctx, start_ts))
            else:
                new_token, reclaim_after, max_attempts = _new_token(), self.reclaim_after, self.max_attempts
                snapshot = await self._update(
                    lambda ctx: partial(changes.claim_next, ctx, start_ts, new_token, reclaim_after, max_attempts)
                )
                token = new_token
            if snapshot is not None:
                self._held[snapshot.id] = Held(token, since)
            return snapshot

    async def load_all(self) -> list[Snapshot[StateT, RunEndT]]:
        with self._traced('load_all'):
            await self._flush_finished()
            return (await self._load_record()).snapshots

    async def load_record(self) -> RunRecord:
        """The whole history of the run (segments and head) with the claims of its node snapshots (claims are
        only written with `reclaim_after`)."""
        with self._traced('load_record'):
            await self._flush_finished()
            return await self._load_record()

    async def load_tail(self) -> RunRecord:
        """The run's live tail (the snapshots still in its head, always including the last one) with their claims,
        from one read of the head: what a status check needs, at the same cost at step 10 and step 100,000."""
        with self._traced('load_tail'):
            await self._flush_finished()
            head = await self._cas().load()
            return self._record(head.snapshots, head.sealed_snapshots)

    async def recover(self, *, force: bool = False) -> list[str]:
        """Make a run whose worker died mid-step runnable again now, without waiting for `reclaim_after`.

        Every node snapshot left `pending` or `running` goes back to `created`, and its claim gets a token that
        nobody holds, so a worker that still held it after all is fenced (`ClaimLostError`) when it uses a claim;
        its attempt count is kept. Returns the ids of the snapshots made runnable.

        A step claimed by a worker without `reclaim_after` has no token, so that worker cannot be fenced: if it is
        merely slow, recovering forks the run. Such a run is refused (`UnfencedClaimError`, nothing changed)
        unless `force`, for an operator who knows that worker is gone.
        """
        if self.should_set_types():
            raise ValueError(f"{self.uri}: recovering a run needs its graph's types: pass the graph (--graph)")
        with self._traced('recover'):
            token = _new_token()
            try:
                return await self._update(lambda ctx: partial(changes.release_claims, ctx, token, force))
            except changes.Unfenced as e:
                unfenced = e.snapshot_ids
            raise UnfencedClaimError(self.bucket, self.key, unfenced)

    async def apply(self, change: Callable[[RunContext], Callable[[RunHead], Change[RunHead, R]]]) -> R:
        """Apply an operator's change to the run's head in one compare-and-swap write (see `time_travel`).

        `change(context)` is called per attempt, with the run's context (graph types, sealed history read so
        far, the S3 clock); a change that asks for sealed history (`NeedSealed`) gets it read first.
        """
        with self._traced('apply'):
            await self._flush_finished()
            return await self._update(change)

    async def load_elements(self) -> tuple[RunHead, list[Element]]:
        """The head read now and every snapshot of the run as stored bytes, sealed history first."""
        with self._traced('load_elements'):
            await self._flush_finished()
            head = await self._cas().load()
            await self._read_sealed(head)
            return head, [*self._sealed.elements[: head.sealed_snapshots], *head.snapshots]

    def should_set_types(self) -> bool:
        """Whether types need to be set."""
        return self._snapshot_types is None

    def set_types(self, state_type: type[StateT], run_end_type: type[RunEndT]) -> None:
        types: tuple[Any, ...] = (state_type, run_end_type, tuple(nodes_type_context.get(())))
        self._snapshot_types = _snapshot_types(*types)
        self._object = None

    @asynccontextmanager
    async def _record_run(self, snapshot_id: str) -> AsyncGenerator[None]:
        """`record_run`, under a claim with `reclaim_after`: the claim from `load_next`, or a new one on a
        `created` snapshot. Without `reclaim_after`, as `FileStatePersistence` does, without claims."""
        await self._flush_finished()
        claimed = self.reclaim_after is not None
        held = self._held.pop(snapshot_id, None)
        token = held.token if held is not None and held.token is not None else _new_token()
        # One span around the node's execution too, so that the node's own spans nest under it.
        with self._traced('record_run', snapshot_id):
            if held is None or not self._surely_held(held):
                await self._start(snapshot_id, held, token)
            logger.info('run %s: snapshot %s running', self.run_id, snapshot_id, extra={'run_id': self.run_id})
            start = perf_counter()
            try:
                yield
            except Exception:
                duration = perf_counter() - start
                if claimed:
                    await self._update(
                        lambda ctx: partial(changes.finish_claimed_run, ctx, snapshot_id, token, duration, 'error')
                    )
                else:
                    await self._update(lambda ctx: partial(changes.finish_run, ctx, snapshot_id, duration, 'error'))
                logger.info('run %s: snapshot %s error', self.run_id, snapshot_id, extra={'run_id': self.run_id})
                raise
            self._finished = Finished(snapshot_id, token if claimed else None, perf_counter() - start)

    async def _start(self, snapshot_id: str, held: Held | None, token: str) -> None:
        """The `running` write of a node this instance did not claim, or the check (a fresh read, no write) that
        a claim it holds for longer than `_surely_held` allows was not taken over meanwhile."""
        start_ts = datetime.now(tz=UTC)
        if self.reclaim_after is None:
            await self._update(lambda ctx: partial(changes.start_run, ctx, snapshot_id, start_ts))
            return
        held_token = None if held is None else held.token
        if held is not None:
            self._cas().forget_cache()  # the cached head is our own claim: only a read tells if it was taken over
        await self._update(
            lambda ctx: partial(changes.start_claimed_run, ctx, snapshot_id, held_token, token, start_ts)
        )

    def _surely_held(self, held: Held) -> bool:
        """Whether no other worker can have taken over the claim `held` yet, by this process's monotonic clock.

        Another worker takes a claim over once it is `reclaim_after` old by its estimate of the S3 clock, which
        is within `CLOCK_TOLERANCE` of ours; the claim was stamped after `held.since`. So a claim younger than
        `reclaim_after` less twice the tolerance is ours for certain, and starting it needs no request. (An
        operator's `recover` may still revoke it sooner: the outcome's write is then refused, `ClaimLostError`.)
        """
        if self.reclaim_after is None:
            return True
        age = monotonic() - held.since + 2 * CLOCK_TOLERANCE.total_seconds()
        return age < self.reclaim_after.total_seconds()

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

    async def _append(self, element: Element) -> None:
        finished, self._finished = self._finished, None
        if finished is None:
            await self._update(lambda ctx: partial(changes.append_if_new, ctx, element, False))
            return
        await self._update(lambda ctx: partial(changes.append_successor, ctx, finished, element))
        logger.info('run %s: snapshot %s success', self.run_id, finished.snapshot_id, extra={'run_id': self.run_id})

    async def _flush_finished(self) -> None:
        # A success that no successor followed (record_run used on its own): written by itself after all.
        finished, self._finished = self._finished, None
        if finished is None:
            return
        snapshot_id, token, duration = finished.snapshot_id, finished.token, finished.duration
        if token is None:
            await self._update(lambda ctx: partial(changes.finish_run, ctx, snapshot_id, duration, 'success'))
        else:
            await self._update(
                lambda ctx: partial(changes.finish_claimed_run, ctx, snapshot_id, token, duration, 'success')
            )

    async def _update(self, change: Callable[[RunContext], Callable[[RunHead], Change[RunHead, R]]]) -> R:
        """Apply the change `change(context)` to the head; read sealed history first if the change asks for it."""
        while True:
            try:
                return await self._cas().update(change(self._context()))
            except NeedSealed as e:
                await self._read_sealed(e.head)
            except Fenced as e:
                fenced = e
                break
        # Raised outside the except clause, so that its context is the caller's: the node's error being recorded.
        raise ClaimLostError(self.bucket, self.key, fenced.snapshot_id, fenced.detail)

    async def _load_record(self) -> RunRecord:
        """The whole history: the head, and the segments it counts (read once per instance: they never change)."""
        return await self._history(await self._cas().load())

    async def _history(self, head: RunHead) -> RunRecord:
        await self._read_sealed(head)
        return self._record([*self._sealed.elements[: head.sealed_snapshots], *head.snapshots])

    def _record(self, elements: Sequence[Element], first_index: int = 0) -> RunRecord:
        types = self._types()
        try:
            types.check_nodes(elements, first_index)
            snapshots = types.snapshots(elements)
        except ValueError as e:
            raise CorruptObjectError(self.bucket, self.key, str(e).splitlines()[0]) from e
        return RunRecord(snapshots, {e.id: e.claim for e in elements if e.claim is not None})

    async def _read_sealed(self, head: RunHead) -> None:
        self._sealed = await read_sealed(self._cas(), head, self._sealed)

    def _context(self) -> RunContext:
        return RunContext(self.key, self._types(), self._sealed, self._cas().server_now)

    def _types(self) -> SnapshotTypes:
        if self._snapshot_types is None:
            raise RuntimeError(
                f'{self.uri}: snapshot types are not set. Pass this persistence to a Graph method '
                '(run, iter, iter_from_persistence, initialize), or call set_graph_types(graph) first.'
            )
        return self._snapshot_types

    def _cas(self) -> CasObject[RunHead]:
        if self._object is None:
            self._object = CasObject(
                bucket=self.bucket,
                key=self.key,
                codec=HeadCodec(self._types()),
                client=self._client,
                retry=self.retry,
                max_object_bytes=self.max_object_bytes,
                labels={'run_id': self.run_id},
                logger=logger,
                confirm_cached_decisions=True,  # "nothing to do" is answered from S3, never from a stale copy
            )
        return self._object

    async def _client(self) -> S3Client:
        client = self.client if self.client is not None else await shared_client(self.session, self.client_settings)
        if self.verify_endpoint:
            # The probe goes beside the run, where its writes are allowed: the key's prefix ('' at the bucket root).
            prefix = self.key[: self.key.rfind('/') + 1]
            await ensure_conditional_writes(client, self.bucket, prefix, retry=self.retry)
        return client


async def recover_run(persistence: S3StatePersistence[Any, Any], *, force: bool = False) -> list[str]:
    """`persistence.recover(force=force)`: what the `pydantic-graph-s3 runs recover [--force]` command calls."""
    return await persistence.recover(force=force)


@dataclass(frozen=True)
class Held:
    """A node snapshot this instance's `load_next` claimed and started: its claim token (`None` without
    `reclaim_after`), and the monotonic time just before the claim was written."""

    token: str | None
    since: float


def _new_token() -> str:
    return uuid.uuid4().hex


async def read_sealed(run: CasObject[Any], head: RunHead, known: Sealed | None = None) -> Sealed:
    """Every segment that `head` (of the run object `run`) counts, read on from what is `known` already, checked to
    be what the head says (its chain, counts, unique ids): the one reader of sealed history, for workers and for
    operators alike."""
    if head.segment_id is None:
        return Sealed()
    if known is not None and known.covers(head):
        return known
    sealed = known if known is not None and known.segment_id == head.segment_id else Sealed(head.segment_id)
    if sealed.count >= head.sealed_segments:  # all read, but not the segments the head's chain names
        sealed = Sealed(head.segment_id)
    for seq in range(sealed.count + 1, head.sealed_segments + 1):
        key = segment_key(run.key, head.segment_id, seq)
        body = await run.read_object(key)
        if body is None:
            raise CorruptObjectError(run.bucket, key, f'segment {seq} of the run is missing')
        try:
            sealed = sealed.extended(body, decode_segment(body))
        except ValueError as e:
            raise CorruptObjectError(run.bucket, key, str(e).splitlines()[0]) from e
    if not sealed.covers(head):
        raise CorruptObjectError(
            run.bucket,
            run.key,
            f'segments 1..{head.sealed_segments} are not the ones the head recorded (swapped, reordered, changed or '
            "another run's): restore them from a backup, or fork the run before its sealed history",
        )
    elements = sealed.elements
    ids = {e.id for e in elements} | {e.id for e in head.snapshots}
    if len(elements) != head.sealed_snapshots or len(ids) != head.total_snapshots:
        raise CorruptObjectError(
            run.bucket,
            run.key,
            f'segments hold {len(elements)} snapshot(s), the head counts {head.sealed_snapshots}, or ids repeat',
        )
    return sealed
