"""Operating runs: list, inspect, export, import, delete and prune the runs stored under one prefix.

Everything here works without the graph's code: a run is read as raw JSON (node ids, statuses, times), and
the graph is only needed to decode its nodes and state with their types. Writes go through the storage
layer's conditional requests, so an operator's command never overwrites a run or deletes one that a worker
advanced after the operator looked at it.
"""

from __future__ import annotations as _annotations

import os
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aioboto3
import anyio
import anyio.to_thread
import pydantic_core
from pydantic_graph.graph import Graph
from pydantic_graph.persistence import EndSnapshot, NodeSnapshot, Snapshot

from pydantic_s3_cas import (
    CasObject,
    CasStats,
    Change,
    ClientSettings,
    Codec,
    CorruptObjectError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    RetryPolicy,
    S3PersistenceError,
    list_objects,
    shared_client,
    validate_bucket_name,
)

from .layout import (
    decode_head,
    encode_head,
    render_list,
    seal,
    segment_group_prefix,
    segment_key,
)
from .persistence import (
    S3StatePersistence,
    decode_snapshot_list,
    graph_types,
    logger,
    read_sealed,
    run_object_key,
    validate_prefix,
    validate_run_id,
)
from .time_travel import (
    KEEP_STATE,
    CopyOf,
    Version,
    copy_of,
    create_fork,
    fork_head,
    rollback,
    update_waiting_state,
    validated_state,
)
from .usage import USAGE_MEMO, HeadFacts, UsageMemo, UsageStats, UsageTally, read_head, usage_memo_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

T = TypeVar('T')

__all__ = ('RunStore', 'RunSummary', 'RunHistory', 'SnapshotRow', 'PruneOutcome', 'format_duration')


@dataclass(frozen=True)
class RunSummary:
    """One run as a listing shows it; the decoded fields are `None` when it was not read (or not readable)."""

    run_id: str
    key: str
    size: int
    last_modified: datetime
    etag: str
    """The ETag of the version summarised: `delete_run` deletes only that version."""
    snapshots: int | None = None
    last_status: str | None = None
    """The status of the last snapshot (`created`, `pending`, `running`, `success`, `error`), or `end`."""
    ended: bool | None = None
    """Whether the last snapshot is an end snapshot."""
    problem: str | None = None
    """Why the object could not be decoded as a snapshot list, if it could not."""


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


@dataclass(frozen=True)
class PruneOutcome:
    run: RunSummary
    deleted: bool
    """Whether the run was deleted (always `False` on a dry run)."""
    reason: str
    """Why it was, would be, or was not deleted."""


class _Raw:
    """The stored bytes as they are (`None`: no object), for reading and create-only writing."""

    def decode(self, body: bytes) -> bytes | None:
        return body

    def encode(self, value: bytes | None) -> bytes:
        assert value is not None, 'a change never writes the empty value'
        return value

    def empty(self) -> bytes | None:
        return None


@dataclass
class RunStore:
    """The runs stored under `s3://{bucket}/{prefix}`, for operators: the library side of the CLI's `runs`.

    Options are those of `S3StatePersistence`; `request_stats` counts the requests of the store itself (the
    persistences it hands out count their own).
    """

    bucket: str
    prefix: str = ''
    client: S3Client | None = field(default=None, repr=False)
    session: aioboto3.Session | None = field(default=None, repr=False)
    client_settings: ClientSettings = field(default_factory=ClientSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_object_bytes: int | None = 64 * 1024 * 1024
    read_concurrency: int = 16
    """How many runs a decoding listing reads at once."""
    page_size: int = 1000
    """Keys per listing request (S3 returns at most 1000)."""
    request_stats: CasStats = field(default_factory=CasStats)

    def __post_init__(self) -> None:
        validate_bucket_name(self.bucket)
        validate_prefix(self.prefix)  # a folder: never list, read or delete another prefix's objects

    def persistence(self, run_id: str, graph: Graph[Any, Any, Any] | None = None) -> S3StatePersistence[Any, Any]:
        """The `S3StatePersistence` of run `run_id`, with `graph`'s types set when given."""
        persistence: S3StatePersistence[Any, Any] = S3StatePersistence.for_run(
            run_id,
            bucket=self.bucket,
            prefix=self.prefix,
            client=self.client,
            session=self.session,
            client_settings=self.client_settings,
            retry=self.retry,
            max_object_bytes=self.max_object_bytes,
        )
        if graph is not None:
            persistence.set_graph_types(graph)
        return persistence

    async def list_runs(self, *, decode: bool = True) -> AsyncIterator[RunSummary]:
        """Every run under the prefix, a listing page at a time (objects whose key is not a run's are skipped).

        With `decode`, each run is also read (one GET, `read_concurrency` at once) to count its snapshots and
        tell its last status; a run that does not decode is still yielded, with `problem` saying why.
        """
        async for page in self._pages():
            infos = [(run_id, info) for info in page if (run_id := self._run_id_of(info.key)) is not None]
            if not decode:
                for run_id, info in infos:
                    yield RunSummary(run_id, info.key, info.size, info.last_modified, info.etag)
                continue
            for summary in await self._read_all(infos):
                if summary is not None:
                    yield summary

    async def prefixes_with_runs(self, *, limit: int = 5) -> list[str]:
        """Up to `limit` deeper prefixes holding objects that could be runs: where to look when this one has none.

        Lists keys under the prefix until it has found `limit` of them (a listing of the whole bucket at most).
        """
        found: list[str] = []
        async for page in list_objects(
            self._client, self.bucket, self.prefix, retry=self.retry, stats=self.request_stats, logger=logger
        ):
            for info in page:
                folder, _, name = info.key.rpartition('/')
                deeper = f'{folder}/'
                # A name with `~` is a segment of a run's history, not a run.
                is_run = name.endswith('.json') and '~' not in name
                if is_run and len(deeper) > len(self.prefix) and deeper not in found:
                    found.append(deeper)
                    if len(found) == limit:
                        return found
        return found

    async def get_run(self, run_id: str) -> RunSummary:
        """The summary of one run, read now. Raises `ObjectNotFoundError` for an unknown run."""
        key = run_object_key(self.prefix, run_id)
        async for page in list_objects(
            self._client, self.bucket, key, retry=self.retry, stats=self.request_stats, logger=logger
        ):
            for info in page:
                if info.key == key and (summary := await self._summarize(run_id, info)) is not None:
                    return summary
        raise ObjectNotFoundError(self.bucket, key)

    async def history(self, run_id: str, graph: Graph[Any, Any, Any] | None = None) -> RunHistory:
        """Every snapshot of a run: raw JSON, or decoded with `graph`'s types (which also checks it is that graph's).

        Raises `ObjectNotFoundError` for an unknown run and `CorruptObjectError` for one that does not decode.
        """
        key = run_object_key(self.prefix, run_id)
        head_body, etag = await self._read(key)
        body = await self._assemble(key, head_body)
        try:
            rows = _raw_rows(body)
            if graph is not None:
                typed = decode_snapshot_list(body, graph)
                rows = [_typed_row(snapshot, raw) for snapshot, raw in zip(typed, rows, strict=True)]
        except ValueError as e:
            raise CorruptObjectError(self.bucket, key, str(e).splitlines()[0]) from e
        return RunHistory(run_id, key, etag, rows, None if graph is None else graph.name or type(graph).__name__)

    async def delete_run(self, run_id: str, *, etag: str) -> None:
        """Delete a run, only if it is still the version with `etag` (from `get_run` or `list_runs`).

        Raises `ObjectChangedError` when it was written since (a worker advanced it), and `ObjectNotFoundError`
        when it is gone; either way nothing was deleted by this call.
        """
        key = run_object_key(self.prefix, run_id)
        if not await self._object(key).delete(etag):
            raise ObjectNotFoundError(self.bucket, key)
        await self._sweep_segments(key)

    async def _sweep_segments(self, key: str) -> None:
        """Delete the segments under a run's key that its current head does not count: all of them once the head
        is gone, and orphans of an earlier run of the same id (another segment id) when it was created again."""
        current: str | None = None
        body, _ = await self._object(key).load_versioned()
        if body is not None:
            try:
                current = decode_head(body).segment_id
            except ValueError:
                return  # not ours to judge: leave everything as it is
        async for page in list_objects(
            self._client,
            self.bucket,
            segment_group_prefix(key),
            retry=self.retry,
            stats=self.request_stats,
            logger=logger,
        ):
            for info in page:
                if current is None or not info.key.startswith(f'{segment_group_prefix(key)}{current}~'):
                    await self._object(info.key).delete(info.etag)

    async def export_run(self, run_id: str, path: str | os.PathLike[str], *, overwrite: bool = False) -> RunSummary:
        """Write the run to `path` as the file `FileStatePersistence(path)` reads: the stored bytes of every
        snapshot, segments and head, assembled into one list (a run never sealed: its object, unchanged).

        Refuses (`FileExistsError`) to replace an existing file unless `overwrite`; the file appears whole or
        not at all.
        """
        summary = await self.get_run(run_id)
        head_body, _ = await self._read(summary.key)
        body = await self._assemble(summary.key, head_body)
        await anyio.to_thread.run_sync(_write_file, Path(path), body, overwrite)
        return summary

    async def import_run(
        self, path: str | os.PathLike[str], run_id: str, graph: Graph[Any, Any, Any] | None = None
    ) -> RunSummary:
        """Store a `FileStatePersistence` file as run `run_id`, never overwriting an existing run.

        The file must be a snapshot list (of `graph`, when given). Raises `ObjectExistsError` when the run
        exists, even if it was created while this call ran (the write is `IfNoneMatch='*'`). A file with more
        finished history than a head keeps is stored segmented at once: its segments first, then the head.
        """
        key = run_object_key(self.prefix, run_id)
        body = await anyio.Path(path).read_bytes()
        try:
            head = decode_head(body)
            if head.segmented:
                raise ValueError('a segmented run head, not a snapshot list')
            if graph is None:
                _raw_rows(body)
            else:
                decode_snapshot_list(body, graph)
        except ValueError as e:
            raise ValueError(f'{path} is not a pydantic-graph snapshot list: {str(e).splitlines()[0]}') from e
        sealed_head, segments = seal(head)
        stored = body if not segments else encode_head(sealed_head)
        creates = [(segment_key(key, sealed_head.segment_id or '', s.seq), s.body) for s in segments]

        def create(current: bytes | None) -> Change[bytes | None, None]:
            if current is not None:
                raise ObjectExistsError(self.bucket, key)
            return Change(stored, None, creates)

        await self._object(key).update(create)
        return await self.get_run(run_id)

    async def prune(self, *, ended_before: datetime, dry_run: bool = False) -> AsyncIterator[PruneOutcome]:
        """Delete the ended runs last written before `ended_before`, yielding what happened to every run.

        Only runs whose last snapshot is an end snapshot qualify. Each delete is conditional on the version
        read, so a run written meanwhile is kept. With `dry_run`, nothing is deleted.
        """
        if ended_before.tzinfo is None:
            raise ValueError('ended_before must be timezone-aware (e.g. datetime(..., tzinfo=UTC))')
        if not dry_run:
            await self._sweep_orphan_segments(ended_before)
        async for run in self.list_runs(decode=True):
            if not run.ended:
                yield PruneOutcome(run, False, run.problem or f'not ended (last status: {run.last_status})')
            elif run.last_modified >= ended_before:
                yield PruneOutcome(run, False, 'ended too recently')
            elif dry_run:
                yield PruneOutcome(run, False, 'would delete (dry run)')
            else:
                yield await self._prune_one(run)

    async def _sweep_orphan_segments(self, written_before: datetime) -> None:
        """Delete segments whose run has no head (a crashed import, or a delete cut short), written before the
        cutoff: an import in progress creates its segments just before its head."""
        heads: set[str] = set()
        segments: list[tuple[str, ObjectInfo]] = []
        async for page in self._pages():
            for info in page:
                if (owner := self._owner_of(info.key)) is not None:
                    segments.append((owner, info))
                elif (run_id := self._run_id_of(info.key)) is not None:
                    heads.add(run_id)
        for owner, info in segments:
            if owner not in heads and info.last_modified < written_before:
                await self._object(info.key).delete(info.etag)

    async def _assemble(self, key: str, head_body: bytes) -> bytes:
        """The run's whole snapshot list as one File-format list: the head itself while it was never sealed."""
        try:
            head = decode_head(head_body)
        except ValueError as e:
            raise CorruptObjectError(self.bucket, key, str(e).splitlines()[0]) from e
        if not head.segmented:
            return head_body
        sealed = await read_sealed(self._object(key), head)
        return render_list([e.raw for e in (*sealed.elements, *head.snapshots)])

    async def _prune_one(self, run: RunSummary) -> PruneOutcome:
        try:
            await self.delete_run(run.run_id, etag=run.etag)
        except ObjectChangedError:
            return PruneOutcome(run, False, 'written since it was read: kept')
        except ObjectNotFoundError:
            return PruneOutcome(run, False, 'already deleted')
        return PruneOutcome(run, True, 'deleted')

    async def fork_run(
        self, run_id: str, *, at: str, new_run_id: str, graph: Graph[Any, Any, Any], state: Any = None
    ) -> str:
        """Create run `new_run_id` from run `run_id`'s history before snapshot `at`, then a `created` copy of `at`
        (its state replaced by `state` when given); any worker can then advance it. Returns the copy's id.

        `state` is validated against the graph's state type before anything is written (`StateValidationError`).
        The write is create-only: an existing `new_run_id` is refused (`ObjectExistsError`), even one created
        while this call ran. The source run is only read, never written.
        """
        validate_run_id(new_run_id)
        replacement = KEEP_STATE if state is None else validated_state(graph, state)
        head, elements = await self.persistence(run_id, graph).load_elements()
        if not head.snapshots:
            raise ObjectNotFoundError(self.bucket, run_object_key(self.prefix, run_id))
        fork, copy_id = fork_head(elements, source_run_id=run_id, at=at, state=replacement, now=datetime.now(tz=UTC))
        graph_types(graph).snapshots(fork.snapshots[-1:])  # the copy decodes as this graph's, before it is written
        target = self.persistence(new_run_id, graph)
        return await target.apply(lambda ctx: partial(create_fork, ctx, self.bucket, fork, copy_id))

    async def rollback_run(
        self,
        run_id: str,
        *,
        to: str,
        graph: Graph[Any, Any, Any],
        state: Any = None,
        etag: str | None = None,
        stale_after: timedelta = timedelta(minutes=15),
    ) -> str:
        """Make the run continue from snapshot `to` again: a `created` copy of it is appended, in one write.

        History stays append-only: snapshots that were waiting, or claimed longer ago than `stale_after`, are
        marked `error` with a revoked claim saying why (a worker still holding one is fenced), and nothing is
        deleted. Refused (`RunBusyError`) while a step is claimed under a live claim, or when the run has ended
        (fork it instead). With `etag`, only if the run is still that version (`ObjectChangedError`). Returns
        the copy's snapshot id.
        """
        replacement = KEEP_STATE if state is None else validated_state(graph, state)
        expected = await self._version(run_id, etag, 'the rollback')
        return await self.persistence(run_id, graph).apply(
            lambda ctx: partial(rollback, ctx, run_id, self.bucket, to, replacement, stale_after, expected)
        )

    async def update_state(
        self, run_id: str, state: Any, *, graph: Graph[Any, Any, Any], etag: str | None = None
    ) -> str:
        """Correct the state of the run's waiting (`created`) snapshot before a worker claims it, in one write.

        `state` is validated against the graph first. Refused (`RunBusyError`) once the step is claimed; with
        `etag`, only if the run is still that version. Returns the snapshot's id.
        """
        replacement = validated_state(graph, state)
        expected = await self._version(run_id, etag, 'the state update')
        return await self.persistence(run_id, graph).apply(
            lambda ctx: partial(update_waiting_state, ctx, run_id, self.bucket, replacement, expected)
        )

    async def _version(self, run_id: str, etag: str | None, operation: str) -> Version | None:
        """The head's version when it still has `etag` (`None` when no etag is given)."""
        if etag is None:
            return None
        key = run_object_key(self.prefix, run_id)
        body, current = await self._read(key)
        if current != etag:
            raise ObjectChangedError(self.bucket, key, etag, operation)
        return Version(etag, body)

    async def stats(
        self, *, stuck_after: timedelta = timedelta(minutes=15), now: datetime | None = None, remember: bool = True
    ) -> UsageStats:
        """A usage summary of every run under the prefix: runs by status, objects and bytes, snapshots per run.

        One listing pass, and a GET of the head (only) of each run whose head changed since the last summary
        (`read_concurrency` at once, started while the listing goes on), parsed as plain JSON: no graph is
        needed. With `remember` (the default), what was read is kept in `{prefix}~usage.json` for the next
        summary: one GET and, when something changed, one PUT; without it, nothing is written and every head is
        read. A run whose last node has been claimed for longer than `stuck_after` (by `now`, default the current
        time) is `stuck`. See `UsageStats`.
        """
        if stuck_after <= timedelta(0):
            raise ValueError(f'stuck_after must be positive, got {stuck_after}')
        tally = UsageTally(datetime.now(tz=UTC) if now is None else now, stuck_after)
        requests_before = self.request_stats.requests
        memo_object = self._cas_object(usage_memo_key(self.prefix), USAGE_MEMO)
        memo, memo_etag = await memo_object.load_versioned() if remember else (UsageMemo(), None)
        limiter = anyio.CapacityLimiter(self.read_concurrency)

        async def read_head_of(run_id: str, info: ObjectInfo) -> None:
            async with limiter:
                try:
                    body, etag = await self._read(info.key)
                except ObjectNotFoundError:
                    tally.forget_object(run_id, info.size)  # deleted since it was listed
                    return
                except ObjectTooLargeError:
                    tally.add_head(run_id, HeadFacts(0, 'unreadable'), info.etag, info.last_modified)
                    return
            tally.add_head(run_id, read_head(body, info.last_modified), etag, info.last_modified)

        async with anyio.create_task_group() as group:
            async for page in self._pages():
                for info in page:
                    if (run_id := self._run_id_of(info.key)) is not None:
                        tally.add_object(run_id, info.size)
                        if (known := memo.facts(run_id, info.etag)) is not None:
                            tally.add_head(run_id, known, info.etag, info.last_modified)
                        else:
                            group.start_soon(read_head_of, run_id, info)
                    elif (owner := self._owner_of(info.key)) is not None:
                        tally.add_object(owner, info.size)
        if remember and (latest := tally.memo()) != memo:
            await self._remember(memo_object, latest, missing=memo_etag is None)
        return tally.result(self.request_stats.requests - requests_before)

    async def _remember(self, memo_object: CasObject[UsageMemo], memo: UsageMemo, *, missing: bool) -> None:
        """Keep the summary's reads for the next one. The memo is only a cache: failing to write it (no
        s3:PutObject on it, say) costs the next summary its reads, so it is logged, not raised."""
        try:
            await memo_object.update(lambda _: Change(memo, None), expect_missing=missing)
        except S3PersistenceError as e:
            logger.warning(
                'usage memo %s not written (%s): the next summary reads every head again',
                memo_object.key,
                type(e).__name__,
            )

    def _pages(self) -> AsyncIterator[list[ObjectInfo]]:
        """Every object under the prefix, a listing page at a time."""
        return list_objects(
            self._client,
            self.bucket,
            self.prefix,
            retry=self.retry,
            stats=self.request_stats,
            page_size=self.page_size,
            logger=logger,
        )

    def _owner_of(self, key: str) -> str | None:
        """The run whose history object `{prefix}{run_id}~...` is (`None` for any other key)."""
        owner, tilde, _ = key[len(self.prefix) :].partition('~')
        if not tilde or '/' in owner:
            return None
        try:
            return validate_run_id(owner)
        except ValueError:
            return None

    def _run_id_of(self, key: str) -> str | None:
        name = key[len(self.prefix) :]
        if not name.endswith('.json'):
            return None
        try:
            return validate_run_id(name.removesuffix('.json'))
        except ValueError:
            return None  # a nested prefix, or an object that is not a run

    async def _read_all(self, infos: Sequence[tuple[str, ObjectInfo]]) -> list[RunSummary | None]:
        summaries: list[RunSummary | None] = [None] * len(infos)
        limiter = anyio.CapacityLimiter(self.read_concurrency)

        async def read(index: int, run_id: str, info: ObjectInfo) -> None:
            async with limiter:
                summaries[index] = await self._summarize(run_id, info)

        async with anyio.create_task_group() as group:
            for index, (run_id, info) in enumerate(infos):
                group.start_soon(read, index, run_id, info)
        return summaries

    async def _summarize(self, run_id: str, info: ObjectInfo) -> RunSummary | None:
        """The run read now (`None` if it was deleted since it was listed)."""
        try:
            body, etag = await self._read(info.key)
        except ObjectNotFoundError:
            return None
        except ObjectTooLargeError as e:
            return RunSummary(run_id, info.key, info.size, info.last_modified, info.etag, problem=str(e))
        try:
            head = decode_head(body)
        except ValueError as e:
            return RunSummary(run_id, info.key, len(body), info.last_modified, etag, problem=str(e))
        last = head.snapshots[-1] if head.snapshots else None
        return RunSummary(
            run_id,
            info.key,
            len(body),
            info.last_modified,
            etag,
            snapshots=head.total_snapshots,
            last_status=None if last is None else last.status,
            ended=last is not None and last.kind == 'end',
        )

    async def _read(self, key: str) -> tuple[bytes, str]:
        body, etag = await self._object(key).load_versioned()
        if body is None or etag is None:
            raise ObjectNotFoundError(self.bucket, key)
        return body, etag

    def _object(self, key: str) -> CasObject[bytes | None]:
        return self._cas_object(key, _Raw())

    def _cas_object(self, key: str, codec: Codec[T]) -> CasObject[T]:
        return CasObject(
            bucket=self.bucket,
            key=key,
            codec=codec,
            client=self._client,
            retry=self.retry,
            max_object_bytes=self.max_object_bytes,
            stats=self.request_stats,
            labels={'run_id': self._run_id_of(key) or ''},
            logger=logger,
        )

    async def _client(self) -> S3Client:
        if self.client is not None:
            return self.client
        return await shared_client(self.session, self.client_settings)


def _raw_rows(body: bytes) -> list[SnapshotRow]:
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


def _write_file(path: Path, body: bytes, overwrite: bool) -> None:
    """Write `body` to `path` whole or not at all, with the mode the user's umask gives a new file.

    Every way the path can be wrong is an `OSError` whose message says which path and what to do.
    """
    if path.is_dir():
        raise IsADirectoryError(f'{path} is a folder: give the path of the file to write')
    if path.exists() and not overwrite:
        raise FileExistsError(f'{path} exists: choose another path, or overwrite it')
    if not path.parent.is_dir():
        raise FileNotFoundError(f'folder {path.parent} does not exist: create it first')
    # Written beside the target and renamed over it, so a reader never sees half a file. os.open applies the
    # umask to 0o666 as any new file gets (tempfile would make it 0o600).
    temporary = path.parent / f'.{path.name}.{secrets.token_hex(4)}'
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, 'wb') as file:
            file.write(body)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise OSError(e.errno, f'cannot write {path}: {e.strerror}') from e
    try:
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise OSError(e.errno, f'cannot write {path}: {e.strerror}') from e


def format_duration(seconds: float | None) -> str:
    """A step's duration as people read it: `15 µs`, `3.2 ms`, `1.5 s` (empty when unknown)."""
    if seconds is None:
        return ''
    if seconds < 1e-3:
        return f'{seconds * 1e6:.0f} µs'
    if seconds < 1:
        return f'{seconds * 1e3:.1f} ms'
    return f'{seconds:.1f} s'
