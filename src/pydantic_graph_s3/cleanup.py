"""Deleting runs: one run at the version the operator saw, or every ended run older than a date, with its history.

The library deletes only objects it can prove it wrote:
- the head of a run, at the version it read (each delete is conditional on that ETag, so a run that a worker
  advanced after the operator looked at it is kept);
- that run's segments: keys of exactly the form `{prefix}{run_id}~{segment_id}~{seq:08d}.json` with the segment
  id its head names (`layout.parse_segment_key`);
- segments of exactly that form whose run has no head (a delete or an import cut short), only once they are older
  than `ORPHAN_GRACE` and the run's head is still absent when checked again just before deleting them. An import
  or a fork writes a new run's segments before its head, and gives up past `run_objects.CREATE_WINDOW`: a segment
  older than the grace cannot belong to one still under way.

Nothing else under the prefix is touched: not other keys with a `~`, not keys of deeper prefixes (another
deployment's runs under `{prefix}q~/`), not the usage memo.
"""

from __future__ import annotations as _annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic_s3_cas import ObjectChangedError, ObjectInfo, ObjectNotFoundError

from .layout import decode_head, segment_group_prefix
from .persistence import run_object_key
from .run_objects import RunObjects, RunSummary

__all__ = ('ORPHAN_GRACE', 'PruneOutcome', 'delete_run', 'prune')

ORPHAN_GRACE = timedelta(days=1)
"""How old a segment without a head must be before `prune` deletes it: 24 times `run_objects.CREATE_WINDOW`, so
that no import or fork still under way is taken for a leftover, even with this machine's clock 23 hours off S3's."""


@dataclass(frozen=True)
class PruneOutcome:
    run: RunSummary
    deleted: bool
    """Whether the run was deleted (always `False` on a dry run)."""
    reason: str
    """Why it was, would be, or was not deleted."""


async def delete_run(objects: RunObjects, run_id: str, *, etag: str) -> None:
    """See `RunStore.delete_run`: the head at `etag`, read first for the id of its segments, then those."""
    key = run_object_key(objects.prefix, run_id)
    body, current = await objects.object(key).load_versioned()
    if body is None or current is None:
        raise ObjectNotFoundError(objects.bucket, key)
    if current != etag:
        raise ObjectChangedError(objects.bucket, key, etag, 'DeleteObject')
    try:
        segment_id = decode_head(body).segment_id
    except ValueError:
        segment_id = None  # not a head we can read: its segments (if any) are not ours to name
    await _delete(objects, run_id, etag, segment_id)


async def prune(
    objects: RunObjects, *, ended_before: datetime, dry_run: bool, now: datetime | None = None
) -> AsyncIterator[PruneOutcome]:
    """See `RunStore.prune`."""
    if ended_before.tzinfo is None or (now is not None and now.tzinfo is None):
        raise ValueError('ended_before and now must be timezone-aware (e.g. datetime(..., tzinfo=UTC))')
    if not dry_run:
        orphans_before = min(ended_before, (datetime.now(tz=UTC) if now is None else now) - ORPHAN_GRACE)
        await _sweep_orphan_segments(objects, orphans_before)
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
        # The summary's segment id was decoded from the very version its ETag names.
        await _delete(objects, run.run_id, run.etag, run.segment_id)
    except ObjectChangedError:
        return PruneOutcome(run, False, 'written since it was read: kept')
    except ObjectNotFoundError:
        return PruneOutcome(run, False, 'already deleted')
    return PruneOutcome(run, True, 'deleted')


async def _delete(objects: RunObjects, run_id: str, etag: str, segment_id: str | None) -> None:
    """Delete the head at `etag`, then the segments named with its `segment_id` (none when it has none)."""
    key = run_object_key(objects.prefix, run_id)
    if not await objects.object(key).delete(etag):
        raise ObjectNotFoundError(objects.bucket, key)
    if segment_id is None:
        return
    # Cut short here, the rest are segments without a head: a later prune sweeps them (see ORPHAN_GRACE).
    async for page in objects.pages(f'{segment_group_prefix(key)}{segment_id}~'):
        for info in page:
            name = objects.segment_of(info.key)
            if name is not None and name[:2] == (run_id, segment_id):
                await objects.object(info.key).delete(info.etag)


async def _sweep_orphan_segments(objects: RunObjects, written_before: datetime) -> None:
    """Delete the segments written before `written_before` whose run has no head, checked again just before."""
    heads: set[str] = set()
    orphans: dict[str, list[ObjectInfo]] = {}
    async for page in objects.pages():
        for info in page:
            if (run_id := objects.run_id_of(info.key)) is not None:
                heads.add(run_id)
            elif (name := objects.segment_of(info.key)) is not None and info.last_modified < written_before:
                orphans.setdefault(name[0], []).append(info)
    for run_id, infos in orphans.items():
        if run_id in heads or await objects.head_exists(run_id):
            continue
        for info in infos:
            await objects.object(info.key).delete(info.etag)
