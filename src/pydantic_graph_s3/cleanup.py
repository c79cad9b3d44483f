"""Deleting runs: one run at the version the operator saw, or every ended run older than a date, with its history.

Each delete is conditional on the ETag read, so a run that a worker advanced after the operator looked at it is
kept. A run's sealed history (`{run_id}~...`) goes with it; history whose head is gone (a delete or an import cut
short) is swept once it is older than the cutoff, since an import in progress writes its segments just before
its head.
"""

from __future__ import annotations as _annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from pydantic_s3_cas import ObjectChangedError, ObjectInfo, ObjectNotFoundError

from .layout import decode_head, segment_group_prefix
from .persistence import run_object_key
from .run_objects import RunObjects, RunSummary

__all__ = ('PruneOutcome', 'delete_run', 'prune')


@dataclass(frozen=True)
class PruneOutcome:
    run: RunSummary
    deleted: bool
    """Whether the run was deleted (always `False` on a dry run)."""
    reason: str
    """Why it was, would be, or was not deleted."""


async def delete_run(objects: RunObjects, run_id: str, *, etag: str) -> None:
    """See `RunStore.delete_run`."""
    key = run_object_key(objects.prefix, run_id)
    if not await objects.object(key).delete(etag):
        raise ObjectNotFoundError(objects.bucket, key)
    await _sweep_segments(objects, key)


async def prune(objects: RunObjects, *, ended_before: datetime, dry_run: bool) -> AsyncIterator[PruneOutcome]:
    """See `RunStore.prune`."""
    if ended_before.tzinfo is None:
        raise ValueError('ended_before must be timezone-aware (e.g. datetime(..., tzinfo=UTC))')
    if not dry_run:
        await _sweep_orphan_segments(objects, ended_before)
    async for run in objects.runs(decode=True):
        if not run.ended:
            yield PruneOutcome(run, False, run.problem or f'not ended (last status: {run.last_status})')
        elif run.last_modified >= ended_before:
            yield PruneOutcome(run, False, 'ended too recently')
        elif dry_run:
            yield PruneOutcome(run, False, 'would delete (dry run)')
        else:
            yield await _prune_one(objects, run)


async def _prune_one(objects: RunObjects, run: RunSummary) -> PruneOutcome:
    try:
        await delete_run(objects, run.run_id, etag=run.etag)
    except ObjectChangedError:
        return PruneOutcome(run, False, 'written since it was read: kept')
    except ObjectNotFoundError:
        return PruneOutcome(run, False, 'already deleted')
    return PruneOutcome(run, True, 'deleted')


async def _sweep_segments(objects: RunObjects, key: str) -> None:
    """Delete the segments under a run's key that its current head does not count: all of them once the head
    is gone, and orphans of an earlier run of the same id (another segment id) when it was created again."""
    current: str | None = None
    body, _ = await objects.object(key).load_versioned()
    if body is not None:
        try:
            current = decode_head(body).segment_id
        except ValueError:
            return  # not ours to judge: leave everything as it is
    group = segment_group_prefix(key)
    async for page in objects.pages(group):
        for info in page:
            if current is None or not info.key.startswith(f'{group}{current}~'):
                await objects.object(info.key).delete(info.etag)


async def _sweep_orphan_segments(objects: RunObjects, written_before: datetime) -> None:
    """Delete history objects whose run has no head, written before the cutoff."""
    heads: set[str] = set()
    segments: list[tuple[str, ObjectInfo]] = []
    async for page in objects.pages():
        for info in page:
            if (owner := objects.owner_of(info.key)) is not None:
                segments.append((owner, info))
            elif (run_id := objects.run_id_of(info.key)) is not None:
                heads.add(run_id)
    for owner, info in segments:
        if owner not in heads and info.last_modified < written_before:
            await objects.object(info.key).delete(info.etag)
