"""The usage summary of the runs under one prefix (`RunStore.stats`), from one listing pass and the runs' heads.

A run is read as little as possible: its objects' count and bytes come from the listing alone, and only its head
(the object `{prefix}{run_id}.json`, the one a worker writes) is read, split into its snapshots and never
validated against a graph: the number of snapshots and the last one's status, claim and times are all the
summary needs.
A run's segments (`{prefix}{run_id}~{segment_id}~{seq:08d}.json`, exactly) add to that run's objects and bytes, and
are never counted as runs; other objects are nobody's and not counted.

What was read from each head is remembered in `{prefix}~usage.json` (`UsageMemo`), under the ETag the listing
shows for it. The next summary reads again only the heads whose ETag changed: a finished run never changes, so
on a prefix of mostly finished runs a summary costs its listing pages and two requests. S3 lists ETags with
strong consistency, so a remembered fact is only ever used for the very bytes it was read from.
"""

from __future__ import annotations as _annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import anyio
import pydantic_core

from pydantic_s3_cas import CasObject, Change, ObjectInfo, ObjectNotFoundError, ObjectTooLargeError, S3PersistenceError

from .layout import Element, decode_head
from .persistence import logger
from .run_objects import RunObjects

__all__ = (
    'RunStatus',
    'Distribution',
    'RunAge',
    'UsageStats',
    'HeadFacts',
    'read_head',
    'UsageTally',
    'UsageMemo',
    'USAGE_MEMO',
    'usage_memo_key',
    'summarize_usage',
)

RunStatus = Literal['active', 'waiting', 'ended', 'failed', 'stuck', 'unreadable']
"""What a run is doing, from its last snapshot.

- `active`: a node is claimed (`pending`/`running`), or has just succeeded and its successor is being written,
  for less than `stuck_after`;
- `stuck`: the same for longer than `stuck_after` (its worker is likely gone: see `runs recover`);
- `waiting`: the next node is `created`, for a worker to pick up;
- `ended`: the last snapshot is an end snapshot;
- `failed`: the last node raised (`error`);
- `unreadable`: the head is not a snapshot list (it is counted, and its objects too, but has no snapshots).
"""

RUN_STATUSES: tuple[RunStatus, ...] = ('active', 'waiting', 'stuck', 'failed', 'ended', 'unreadable')


@dataclass(frozen=True)
class Distribution:
    """A total and nearest-rank percentiles of one quantity over the runs (all 0 when there are no runs)."""

    total: int
    p50: int
    p90: int
    p99: int
    max: int

    @classmethod
    def of(cls, values: Iterable[int]) -> Distribution:
        ordered = sorted(values)
        if not ordered:
            return cls(0, 0, 0, 0, 0)

        def rank(fraction: float) -> int:
            return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

        return cls(sum(ordered), rank(0.5), rank(0.9), rank(0.99), ordered[-1])


@dataclass(frozen=True)
class RunAge:
    """A run that is not finished, and when it was last written."""

    run_id: str
    status: RunStatus
    last_written: datetime


@dataclass(frozen=True)
class UsageStats:
    """What `RunStore.stats` found under the prefix."""

    runs: int
    by_status: Mapping[RunStatus, int]
    """Runs by what their last snapshot says (see `RunStatus`); every status is present, with 0 when none."""
    objects: Distribution
    """Objects per run: its head plus the segments (`{run_id}~{segment_id}~{seq}.json`) of its earlier history."""
    bytes: Distribution
    """Stored bytes per run, over all its objects."""
    snapshots: Distribution
    """Snapshots per readable run."""
    oldest_active: RunAge | None
    """Of the runs not finished (active, waiting or stuck), the one written least recently."""
    stuck_after: timedelta
    """The claim age past which an active run counts as stuck."""
    headless_objects: int = 0
    """Segments whose run has no head (a delete or an import cut short; `prune` sweeps them after a day)."""
    headless_bytes: int = 0
    requests: int = 0
    """Requests this summary cost: listing pages, one GET per head read, and the memo's GET and PUT."""
    memo_entries_skipped: int = 0
    """Entries of `{prefix}~usage.json` that were not valid: left out (those heads were read again) and replaced."""


Phase = Literal['claimed', 'waiting', 'ended', 'failed', 'unreadable']
"""What a head says on its own; `claimed` becomes `active` or `stuck` by the claim's age when the summary is made."""


@dataclass(frozen=True)
class HeadFacts:
    """What the summary needs from a run's head: facts of its bytes alone, so they can be remembered by ETag."""

    snapshots: int
    phase: Phase
    claimed_at: datetime | None = None
    """When the last node was claimed (`claimed` only)."""

    def status(self, now: datetime, stuck_after: timedelta) -> RunStatus:
        if self.phase != 'claimed':
            return self.phase
        assert self.claimed_at is not None
        return 'stuck' if now - self.claimed_at > stuck_after else 'active'


def read_head(body: bytes, last_written: datetime) -> HeadFacts:
    """The snapshot count and phase of a run from its head alone (see `layout`): the head counts the snapshots
    sealed in other objects, and its last snapshot is always its own. A head that does not decode is
    `unreadable`, with 0 snapshots."""
    try:
        head = decode_head(body)
    except ValueError:
        return HeadFacts(0, 'unreadable')
    if not head.snapshots:
        return HeadFacts(0, 'waiting')
    last = head.snapshots[-1]
    if last.kind == 'end':
        return HeadFacts(head.total_snapshots, 'ended')
    if last.status == 'error':
        return HeadFacts(head.total_snapshots, 'failed')
    if last.status == 'created':
        return HeadFacts(head.total_snapshots, 'waiting')
    return HeadFacts(head.total_snapshots, 'claimed', _claimed_at(last, last_written))


def _claimed_at(snapshot: Element, last_written: datetime) -> datetime:
    """When the snapshot's worker took it: its claim's time, else its start, else the head's last write.

    A claim without `reclaim_after` has no time of its own; the head's last write is no earlier than the claim.
    """
    if snapshot.claim is not None:
        return snapshot.claim.claimed_at
    start = pydantic_core.from_json(snapshot.raw).get('start_ts')
    if isinstance(start, str):
        try:
            parsed = datetime.fromisoformat(start)
        except ValueError:
            return last_written
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return last_written


USAGE_MEMO_NAME = '~usage.json'
"""The memo's name under the prefix: a `~` never occurs in a run id, so it is never taken for a run."""


def usage_memo_key(prefix: str) -> str:
    return f'{prefix}{USAGE_MEMO_NAME}'


@dataclass(frozen=True)
class UsageMemo:
    """The facts read from each run's head, by run id, with the ETag of the bytes they were read from."""

    heads: Mapping[str, tuple[str, HeadFacts]] = field(default_factory=dict)
    skipped: int = field(default=0, compare=False)
    """Entries of the stored memo that were not valid (damaged, or of another writer), left out and read again."""

    def facts(self, run_id: str, etag: str) -> HeadFacts | None:
        """What the head with this ETag says, if it was read before (`None`: read it)."""
        known = self.heads.get(run_id)
        return known[1] if known is not None and known[0] == etag else None


_MEMO_FORMAT = 'usage-1'
_PHASES: frozenset[str] = frozenset(get_args(Phase))


class UsageMemoCodec:
    """The memo as JSON: `{"pydantic_graph_s3": "usage-1", "heads": {run_id: [etag, snapshots, phase, claimed_at]}}`.

    It is a cache, so bytes it does not recognise (a future format, a damaged object) decode to an empty memo,
    and an entry it does not recognise is left out (counted in `skipped`): either costs reading those heads again,
    and is then written over, instead of failing the summary.
    """

    def decode(self, body: bytes) -> UsageMemo:
        try:
            document = pydantic_core.from_json(body)
            if document.get('pydantic_graph_s3') != _MEMO_FORMAT:
                return UsageMemo()
            entries = dict(document['heads'])
        except (ValueError, TypeError, KeyError, AttributeError):
            return UsageMemo()
        heads: dict[str, tuple[str, HeadFacts]] = {}
        for run_id, entry in entries.items():
            try:
                heads[run_id] = _decode_entry(entry)
            except (ValueError, TypeError):
                continue
        return UsageMemo(heads, skipped=len(entries) - len(heads))

    def encode(self, value: UsageMemo) -> bytes:
        heads = {run_id: _encode_entry(etag, facts) for run_id, (etag, facts) in sorted(value.heads.items())}
        return pydantic_core.to_json({'pydantic_graph_s3': _MEMO_FORMAT, 'heads': heads})

    def empty(self) -> UsageMemo:
        return UsageMemo()


USAGE_MEMO = UsageMemoCodec()


def _encode_entry(etag: str, facts: HeadFacts) -> list[Any]:
    claimed_at = None if facts.claimed_at is None else facts.claimed_at.isoformat()
    return [etag, facts.snapshots, facts.phase, claimed_at]


def _decode_entry(entry: Any) -> tuple[str, HeadFacts]:
    """One memo entry, checked as strictly as a head: a count is an int (not a bool), a claim time has a zone."""
    if not isinstance(entry, list) or len(entry) != 4:
        raise ValueError('not a memo entry')
    etag, snapshots, phase, claimed_at = entry
    is_count = isinstance(snapshots, int) and not isinstance(snapshots, bool) and snapshots >= 0
    if not isinstance(etag, str) or not is_count or phase not in _PHASES:
        raise ValueError('not a memo entry')
    claimed = None if claimed_at is None else datetime.fromisoformat(claimed_at)
    if claimed is not None and claimed.tzinfo is None:
        raise ValueError('a claim time without a time zone')
    if (phase == 'claimed') != (claimed is not None):
        raise ValueError('a claimed phase needs its claim time, and only it has one')
    return etag, HeadFacts(snapshots, phase, claimed)


@dataclass
class _RunTally:
    objects: int = 0
    bytes: int = 0
    facts: HeadFacts | None = None
    etag: str | None = None
    last_written: datetime | None = None


@dataclass
class UsageTally:
    """The summary being built: objects as the listing shows them, heads as they are read or remembered."""

    now: datetime
    stuck_after: timedelta
    runs: dict[str, _RunTally] = field(default_factory=dict)

    def add_object(self, run_id: str, size: int) -> None:
        tally = self.runs.setdefault(run_id, _RunTally())
        tally.objects += 1
        tally.bytes += size

    def forget_object(self, run_id: str, size: int) -> None:
        tally = self.runs[run_id]
        tally.objects -= 1
        tally.bytes -= size
        if tally.objects == 0:
            del self.runs[run_id]

    def add_head(self, run_id: str, facts: HeadFacts, etag: str, last_written: datetime) -> None:
        tally = self.runs.setdefault(run_id, _RunTally())
        tally.facts, tally.etag, tally.last_written = facts, etag, last_written

    def memo(self) -> UsageMemo:
        """What was read or remembered this time, for the next summary."""
        return UsageMemo(
            {
                run_id: (tally.etag, tally.facts)
                for run_id, tally in self.runs.items()
                if tally.facts is not None and tally.etag is not None
            }
        )

    def result(self, requests: int) -> UsageStats:
        heads = {run_id: tally for run_id, tally in self.runs.items() if tally.facts is not None}
        headless = [tally for tally in self.runs.values() if tally.facts is None]
        statuses = {run_id: self._status(tally) for run_id, tally in heads.items()}
        by_status: dict[RunStatus, int] = dict.fromkeys(RUN_STATUSES, 0)
        for status in statuses.values():
            by_status[status] += 1
        return UsageStats(
            runs=len(heads),
            by_status=by_status,
            objects=Distribution.of(tally.objects for tally in heads.values()),
            bytes=Distribution.of(tally.bytes for tally in heads.values()),
            snapshots=Distribution.of(_snapshot_counts(heads.values())),
            oldest_active=_oldest_active(heads, statuses),
            stuck_after=self.stuck_after,
            headless_objects=sum(tally.objects for tally in headless),
            headless_bytes=sum(tally.bytes for tally in headless),
            requests=requests,
        )

    def _status(self, tally: _RunTally) -> RunStatus:
        assert tally.facts is not None
        return tally.facts.status(self.now, self.stuck_after)


def _snapshot_counts(tallies: Iterable[_RunTally]) -> Sequence[int]:
    return [t.facts.snapshots for t in tallies if t.facts is not None and t.facts.phase != 'unreadable']


def _oldest_active(heads: Mapping[str, _RunTally], statuses: Mapping[str, RunStatus]) -> RunAge | None:
    open_runs = [
        RunAge(run_id, statuses[run_id], tally.last_written)
        for run_id, tally in heads.items()
        if tally.last_written is not None and statuses[run_id] in ('active', 'waiting', 'stuck')
    ]
    return min(open_runs, key=lambda run: (run.last_written, run.run_id), default=None)


async def summarize_usage(
    objects: RunObjects, *, stuck_after: timedelta, now: datetime | None, remember: bool
) -> UsageStats:
    """See `RunStore.stats`."""
    if stuck_after <= timedelta(0):
        raise ValueError(f'stuck_after must be positive, got {stuck_after}')
    if now is not None and now.tzinfo is None:
        raise ValueError('now must be timezone-aware (e.g. datetime(..., tzinfo=UTC))')
    tally = UsageTally(datetime.now(tz=UTC) if now is None else now, stuck_after)
    requests_before = objects.request_stats.requests
    memo_object = objects.cas_object(usage_memo_key(objects.prefix), USAGE_MEMO)
    memo, memo_etag = await memo_object.load_versioned() if remember else (UsageMemo(), None)
    if memo.skipped:
        logger.warning(
            'usage memo %s: %d invalid entr(ies) left out; those heads are read again and the memo rewritten',
            memo_object.key,
            memo.skipped,
        )
    limiter = anyio.CapacityLimiter(objects.read_concurrency)

    async def read_head_of(run_id: str, info: ObjectInfo) -> None:
        async with limiter:
            try:
                body, etag = await objects.read(info.key)
            except ObjectNotFoundError:
                tally.forget_object(run_id, info.size)  # deleted since it was listed
                return
            except ObjectTooLargeError:
                tally.add_head(run_id, HeadFacts(0, 'unreadable'), info.etag, info.last_modified)
                return
        tally.add_head(run_id, read_head(body, info.last_modified), etag, info.last_modified)

    async with anyio.create_task_group() as group:
        async for page in objects.pages():
            for info in page:
                if (run_id := objects.run_id_of(info.key)) is not None:
                    tally.add_object(run_id, info.size)
                    if (known := memo.facts(run_id, info.etag)) is not None:
                        tally.add_head(run_id, known, info.etag, info.last_modified)
                    else:
                        group.start_soon(read_head_of, run_id, info)
                elif (segment := objects.segment_of(info.key)) is not None:
                    tally.add_object(segment[0], info.size)
    if remember and ((latest := tally.memo()) != memo or memo.skipped):
        await _remember(memo_object, latest, missing=memo_etag is None)
    return replace(tally.result(objects.request_stats.requests - requests_before), memo_entries_skipped=memo.skipped)


async def _remember(memo_object: CasObject[UsageMemo], memo: UsageMemo, *, missing: bool) -> None:
    """Keep the summary's reads for the next one. The memo is only a cache: failing to write it (no
    s3:PutObject on it, say) costs the next summary its reads, so it is logged, not raised."""
    try:
        await memo_object.update(lambda _: Change(memo, None), expect_missing=missing)
    except S3PersistenceError as e:
        logger.warning(
            'usage memo %s not written (%s): the next summary reads every head again', memo_object.key, type(e).__name__
        )
