"""Operating runs: list, inspect, export, import, delete, prune, fork, roll back and summarise the runs under a prefix.

`RunStore` is the one entry point; each responsibility lives in a module of its own, on the prefix's objects
(`run_objects`): the history as rows (`history`), files (`archive`), deleting (`cleanup`), time travel
(`time_travel`) and the usage summary (`usage`).

Everything here works without the graph's code: a run is read as raw JSON (node ids, statuses, times), and
the graph is only needed to decode its nodes and state with their types. Writes go through the storage
layer's conditional requests, so an operator's command never overwrites a run or deletes one that a worker
advanced after the operator looked at it.
"""

from __future__ import annotations as _annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from pydantic_graph.graph import Graph

from pydantic_s3_cas import CasStats, ObjectChangedError, ObjectNotFoundError, S3Connection

from . import archive, cleanup
from .cleanup import PruneOutcome
from .history import RunHistory, SnapshotRow, read_history
from .persistence import S3StatePersistence, graph_types, run_object_key, validate_run_id
from .run_objects import RunObjects, RunSummary
from .time_travel import (
    KEEP_STATE,
    Version,
    create_fork,
    fork_head,
    rollback,
    update_waiting_state,
    validated_state,
)
from .usage import UsageStats, summarize_usage

__all__ = ('RunStore', 'RunSummary', 'RunHistory', 'SnapshotRow', 'PruneOutcome', 'format_duration')


@dataclass
class RunStore(S3Connection):
    """The runs stored under `s3://{bucket}/{prefix}`, for operators: the library side of the CLI's `runs`.

    Options are those of `S3StatePersistence` (`bucket`, `prefix`, `client`, `session`, `client_settings` and
    `retry` are `S3Connection`'s, checked at construction); `request_stats` counts the requests of the store
    itself (the persistences it hands out count their own).
    """

    max_object_bytes: int | None = 64 * 1024 * 1024
    read_concurrency: int = 16
    """How many runs a decoding listing reads at once."""
    page_size: int = 1000
    """Keys per listing request (S3 returns at most 1000)."""
    request_stats: CasStats = field(default_factory=CasStats)

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
        async for summary in self._objects.runs(decode=decode):
            yield summary

    async def prefixes_with_runs(self, *, limit: int = 5) -> list[str]:
        """Up to `limit` deeper prefixes holding objects that could be runs: where to look when this one has none.

        Lists keys under the prefix until it has found `limit` of them (a listing of the whole bucket at most).
        """
        found: list[str] = []
        async for page in self._objects.pages():
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
        return await self._objects.get_run(run_id)

    async def history(self, run_id: str, graph: Graph[Any, Any, Any] | None = None) -> RunHistory:
        """Every snapshot of a run: raw JSON, or decoded with `graph`'s types (which also checks it is that graph's).

        Raises `ObjectNotFoundError` for an unknown run and `CorruptObjectError` for one that does not decode.
        """
        return await read_history(self._objects, run_id, graph)

    async def delete_run(self, run_id: str, *, etag: str) -> None:
        """Delete a run, only if it is still the version with `etag` (from `get_run` or `list_runs`).

        Raises `ObjectChangedError` when it was written since (a worker advanced it), and `ObjectNotFoundError`
        when it is gone; either way nothing was deleted by this call.
        """
        await cleanup.delete_run(self._objects, run_id, etag=etag)

    async def export_run(self, run_id: str, path: str | os.PathLike[str], *, overwrite: bool = False) -> RunSummary:
        """Write the run to `path` as the file `FileStatePersistence(path)` reads: the stored bytes of every
        snapshot, segments and head, assembled into one list (a run never sealed: its object, unchanged).

        Refuses (`FileExistsError`) to replace an existing file unless `overwrite`; the file appears whole or
        not at all.
        """
        return await archive.export_run(self._objects, run_id, path, overwrite=overwrite)

    async def import_run(
        self, path: str | os.PathLike[str], run_id: str, graph: Graph[Any, Any, Any] | None = None
    ) -> RunSummary:
        """Store a `FileStatePersistence` file as run `run_id`, never overwriting an existing run.

        The file must be a snapshot list (of `graph`, when given). Raises `ObjectExistsError` when the run
        exists, even if it was created while this call ran (the write is `IfNoneMatch='*'`). A file with more
        finished history than a head keeps is stored segmented at once: its segments first, then the head.
        """
        return await archive.import_run(self._objects, path, run_id, graph)

    async def prune(
        self, *, ended_before: datetime, dry_run: bool = False, now: datetime | None = None
    ) -> AsyncIterator[PruneOutcome]:
        """Delete the ended runs last written before `ended_before`, yielding what happened to every run.

        Only runs whose last snapshot is an end snapshot qualify. Each delete is conditional on the version
        read, so a run written meanwhile is kept. With `dry_run`, nothing is deleted. Segments whose run has no
        head (a delete or an import cut short) are deleted too once written before `ended_before` and more than
        `ORPHAN_GRACE` (a day) before `now` (default: this machine's clock); nothing else is ever deleted (see
        `cleanup`).
        """
        async for outcome in cleanup.prune(self._objects, ended_before=ended_before, dry_run=dry_run, now=now):
            yield outcome

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
        with self._objects.creating():  # its segments are written before its head: see `cleanup.ORPHAN_GRACE`
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
        body, current = await self._objects.read(key)
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
        return await summarize_usage(self._objects, stuck_after=stuck_after, now=now, remember=remember)

    @property
    def _objects(self) -> RunObjects:
        # Made on each use from the fields, so a field changed after construction (a test's page size) applies.
        return RunObjects(
            self.bucket,
            self.prefix,
            self.s3,
            self.retry,
            self.max_object_bytes,
            self.request_stats,
            self.page_size,
            self.read_concurrency,
        )


def format_duration(seconds: float | None) -> str:
    """A step's duration as people read it: `15 µs`, `3.2 ms`, `1.5 s` (empty when unknown)."""
    if seconds is None:
        return ''
    if seconds < 1e-3:
        return f'{seconds * 1e6:.0f} µs'
    if seconds < 1:
        return f'{seconds * 1e3:.1f} ms'
    return f'{seconds:.1f} s'
