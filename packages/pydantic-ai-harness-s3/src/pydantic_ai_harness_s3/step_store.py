"""`S3StepStore`: pydantic-ai-harness's `StepStore` in S3, safe across processes by compare-and-swap.

Key layout under the store's prefix (`{rid}` is the percent-encoded run id):

```text
runs/{rid}.json                        RunRecord; created once (If-None-Match), never rewritten
steps/{rid}/head.json                  the run's head: the one object every append changes (If-Match)
steps/{rid}/log/{n:08d}.json           sealed segment n: 32 log entries, immutable
steps/{rid}/snapshots/{uuid}.json      one ContinuableSnapshot each, immutable
steps/{rid}/keys/{kind}/{sha256}.json  a custom idempotency key that left the head's window; create-only, immutable
steps/{rid}/tool-effects/{tcid}.json   one ToolEffectRecord per tool call, changed by compare-and-swap
```

The head holds the open end of the run's log (at most a segment's worth of events and snapshot references, each
with the sequence number the head assigned), the recent idempotency keys, and references to the newest snapshot
and the newest `complete` one. An append is one compare-and-swap on the head, so sequence numbers are assigned in
one order, without gaps, and a key is checked and recorded in the same write that stores the event. When the open
end fills up, its oldest entries are written out as an immutable segment and only then dropped from the head, so
the head stays small however long the run grows, and nothing is ever in neither place.

Idempotency keys: StepPersistence's own keys (`{index}:...`) are covered forever by an index floor (events) or
high-water mark (snapshots) in the head. Any other ("custom") key that leaves the head's window of `KEY_WINDOW`
keys gets a marker object under `keys/`, created by the same head update that drops it, before the head is
written: every key ever recorded is in the head or has a marker. An append of a custom key that is not in the
head, on a head that has dropped custom keys, reads the marker first (one GET); the head also names the last
`MARKED_RECENTLY` keys it dropped, so that the decision can be re-checked inside the compare-and-swap against
keys dropped by racing writers after that GET.
"""

from __future__ import annotations as _annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, TypeAdapter, model_serializer
from pydantic_ai_harness.step_persistence import (
    ContinuableSnapshot,
    RunRecord,
    SnapshotState,
    StepEvent,
    ToolEffectRecord,
)
from typing_extensions import Unpack

from pydantic_s3_cas import CasObject, Change, CorruptObjectError, RetriesExhaustedError, S3PersistenceError

from ._location import S3Options, S3Store, key_part

__all__ = ('S3StepStore', 'RunAlreadyRegisteredError', 'SEGMENT_ENTRIES', 'KEY_WINDOW', 'MARKED_RECENTLY')

SEGMENT_ENTRIES = 32
"""Log entries per sealed segment; the head holds fewer than twice this many."""
KEY_WINDOW = 64
"""Idempotency keys the head remembers exactly, per kind (events, snapshots)."""
MARKED_RECENTLY = 16
"""Custom keys the head names after moving them to markers, per kind: how far a marker lookup can be re-checked."""


class RunAlreadyRegisteredError(ValueError):
    """`register_run` found the run id registered by another registration; nothing was overwritten."""

    def __init__(self, run_id: str, uri: str) -> None:
        self.run_id = run_id
        super().__init__(
            f'{uri}: run {run_id!r} is already registered by another registration and was left untouched. '
            'A run id is single-shot: use a new run id, and conversation_id= to group runs.'
        )


class _EventEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra='forbid')
    type: Literal['event'] = 'event'
    seq: int
    event: StepEvent


class _SnapshotEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra='forbid')
    type: Literal['snapshot'] = 'snapshot'
    seq: int
    object: str
    """The snapshot's key below the run's folder, `snapshots/{uuid}.json`."""
    state: SnapshotState
    idempotency_key: str | None = None


_Entry = Annotated[_EventEntry | _SnapshotEntry, Field(discriminator='type')]


class _Head(BaseModel):
    """The run's compare-and-swap point. Change functions build a new one and never modify the one they get."""

    model_config = ConfigDict(frozen=True, extra='forbid')
    format: Literal[1] = 1
    next_event: int = 0
    next_snapshot: int = 0
    sealed_segments: int = 0
    open: tuple[_Entry, ...] = ()
    """Log entries not yet in a sealed segment, oldest first."""
    event_keys: tuple[str, ...] = ()
    """The most recent event idempotency keys, oldest first (at most `KEY_WINDOW`)."""
    event_key_floor: int = -1
    """The highest StepPersistence key index (`{index}:...`) that has left `event_keys`: older indexes were seen."""
    snapshot_keys: tuple[str, ...] = ()
    snapshot_high_water: int = -1
    snapshot_keys_at_high_water: tuple[str, ...] = ()
    latest: _SnapshotEntry | None = None
    latest_complete: _SnapshotEntry | None = None
    event_keys_marked: int = 0
    """How many custom event keys have left `event_keys` for a marker object (`keys/events/`)."""
    event_keys_marked_recently: tuple[str, ...] = ()
    """The last of those (at most `MARKED_RECENTLY`), oldest first."""
    snapshot_keys_marked: int = 0
    snapshot_keys_marked_recently: tuple[str, ...] = ()

    @model_serializer(mode='wrap')
    def _without_unused_markers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave the marker fields out until a custom key is marked: StepPersistence's own runs never need them,
        and every append uploads the head."""
        data: dict[str, Any] = handler(self)
        for name in _MARKER_FIELDS:
            if not data[name]:
                del data[name]
        return data


_MARKER_FIELDS = (
    'event_keys_marked',
    'event_keys_marked_recently',
    'snapshot_keys_marked',
    'snapshot_keys_marked_recently',
)
_HEAD = TypeAdapter(_Head)
_Segment = tuple[_EventEntry | _SnapshotEntry, ...]
_SEGMENT: TypeAdapter[_Segment] = TypeAdapter(tuple[_Entry, ...])
_RUN = TypeAdapter(RunRecord)
_SNAPSHOT = TypeAdapter(ContinuableSnapshot)
_TOOL_EFFECT = TypeAdapter(ToolEffectRecord)


def _key_index(key: str) -> int | None:
    """The leading `{index}:` StepPersistence puts in its keys (events and snapshots), if `key` has one."""
    head, separator, _ = key.partition(':')
    if not separator or not head.isdigit():
        return None
    return int(head)


def _event_covered(head: _Head, key: str) -> bool:
    """Whether the head alone shows `key` stored: in its window, or an index at or below the floor."""
    if key in head.event_keys:
        return True
    index = _key_index(key)
    return index is not None and index <= head.event_key_floor


def _snapshot_covered(head: _Head, key: str) -> bool:
    """As `InMemoryStepStore` decides: a key below the high-water index, or one already recorded, was saved."""
    index = _key_index(key)
    if index is not None and head.snapshot_high_water >= 0:
        if index < head.snapshot_high_water:
            return True
        if index == head.snapshot_high_water and key in head.snapshot_keys_at_high_water:
            return True
    return key in head.snapshot_keys


_Creates = tuple[tuple[str, bytes], ...]
"""Marker objects (key in the bucket, bytes) a head update creates before writing the head."""


@dataclass(frozen=True)
class _KeyKind:
    """Where the head keeps one kind's idempotency keys (events or snapshots), and where its markers go."""

    folder: Literal['events', 'snapshots']
    field: Literal['event', 'snapshot']
    covered: Callable[[_Head, str], bool]

    def window(self, head: _Head) -> tuple[str, ...]:
        keys: tuple[str, ...] = getattr(head, f'{self.field}_keys')
        return keys

    def marked(self, head: _Head) -> int:
        count: int = getattr(head, f'{self.field}_keys_marked')
        return count

    def marked_recently(self, head: _Head) -> tuple[str, ...]:
        keys: tuple[str, ...] = getattr(head, f'{self.field}_keys_marked_recently')
        return keys


_EVENT_KEYS = _KeyKind('events', 'event', _event_covered)
_SNAPSHOT_KEYS = _KeyKind('snapshots', 'snapshot', _snapshot_covered)


def _marker_name(kind: _KeyKind, key: str) -> str:
    """The marker's key below the run's folder: a hash, since keys may be long or hold any character."""
    return f'keys/{kind.folder}/{hashlib.sha256(key.encode()).hexdigest()}.json'


def _marker_body(key: str) -> bytes:
    """The same bytes from every writer that moves `key` out of the head, as a create-only object needs."""
    return json.dumps({'idempotency_key': key}).encode()


@dataclass(frozen=True)
class _Lookup:
    """What an append learned about its key before its compare-and-swap, for the change to re-check.

    `marked_before`: the head's count of marked keys when the append last made sure `key` had no marker (or
    found one: `found`). Keys marked after that are named in the head (`*_marked_recently`), if not too many.
    """

    found: bool = False
    marked_before: int = 0
    head_missing: bool = False
    """The run had no head yet: the append creates it without reading it again (S3 refuses it if one appeared)."""


class _Decision(NamedTuple):
    seen: bool
    recheck: bool = False


def _decide(kind: _KeyKind, head: _Head, key: str, lookup: _Lookup) -> _Decision:
    """Was `key` stored? `recheck`: too many keys were marked since the lookup to tell without another one."""
    if lookup.found or kind.covered(head, key):
        return _Decision(seen=True)
    marked_since = kind.marked(head) - lookup.marked_before
    if marked_since <= 0:
        return _Decision(seen=False)
    recent = kind.marked_recently(head)
    if marked_since > len(recent):
        return _Decision(seen=False, recheck=True)
    return _Decision(seen=key in recent[-marked_since:])


def _remember_key(kind: _KeyKind, head: _Head, key: str, folder: str) -> tuple[dict[str, Any], _Creates]:
    """The head fields that record `key`, and the markers of the custom keys that leave the window for it.

    StepPersistence's index keys that leave the window need no marker: the event floor or the snapshot
    high-water mark covers them.
    """
    keys = (*kind.window(head), key)
    update: dict[str, Any] = {f'{kind.field}_keys': keys[-KEY_WINDOW:]}
    creates: list[tuple[str, bytes]] = []
    marked = list(kind.marked_recently(head))
    floor = head.event_key_floor
    for evicted in keys[:-KEY_WINDOW]:
        index = _key_index(evicted)
        if index is None:
            creates.append((folder + _marker_name(kind, evicted), _marker_body(evicted)))
            marked.append(evicted)
        elif kind is _EVENT_KEYS:
            floor = max(floor, index)
    if creates:
        update[f'{kind.field}_keys_marked'] = kind.marked(head) + len(creates)
        update[f'{kind.field}_keys_marked_recently'] = tuple(marked[-MARKED_RECENTLY:])
    if kind is _EVENT_KEYS:
        update['event_key_floor'] = floor
    else:
        update |= _raise_snapshot_high_water(head, key)
    return update, tuple(creates)


def _raise_snapshot_high_water(head: _Head, key: str) -> dict[str, Any]:
    index = _key_index(key)
    if index is None or index < head.snapshot_high_water:
        return {}
    if index > head.snapshot_high_water:
        return {'snapshot_high_water': index, 'snapshot_keys_at_high_water': (key,)}
    return {'snapshot_keys_at_high_water': (*head.snapshot_keys_at_high_water, key)}


def _head_or_empty(head: _Head | None) -> _Head:
    return head if head is not None else _Head()


@dataclass(frozen=True)
class _Appended:
    """What an append decided: whether it stored anything, and the segment to seal next, if one is full.

    `recheck`: nothing was written because the append must look for its key's marker again first.
    """

    stored: bool
    segment: int = 0
    to_seal: tuple[_EventEntry | _SnapshotEntry, ...] = ()
    recheck: bool = False


_Append = Callable[[_Head | None], Change[_Head | None, _Appended]]
_AppendAfter = Callable[[_Lookup], _Append]
"""An append's change, made from what its key lookup found."""


def _with_entry(
    head: _Head, entry: _EventEntry | _SnapshotEntry, creates: _Creates = (), **update: Any
) -> Change[_Head | None, _Appended]:
    new = head.model_copy(update={'open': (*head.open, entry), **update})
    full = new.open[:SEGMENT_ENTRIES] if len(new.open) >= SEGMENT_ENTRIES else ()
    return Change(new, _Appended(True, new.sealed_segments, tuple(full)), creates)


def _append_entry(
    kind: _KeyKind, key: str | None, folder: str, entry_of: Callable[[_Head], tuple[_Entry, dict[str, Any]]]
) -> _AppendAfter:
    """The change that appends the entry `entry_of` makes for the head (with the head fields it sets), unless
    `key` was already stored."""

    def after(lookup: _Lookup) -> _Append:
        def change(stored: _Head | None) -> Change[_Head | None, _Appended]:
            head = _head_or_empty(stored)
            remembered: dict[str, Any] = {}
            creates: _Creates = ()
            if key is not None:
                if (decision := _decide(kind, head, key, lookup)).seen or decision.recheck:
                    return Change(None, _Appended(False, recheck=decision.recheck))
                remembered, creates = _remember_key(kind, head, key, folder)
            entry, update = entry_of(head)
            return _with_entry(head, entry, creates, **update, **remembered)

        return change

    return after


def _append_event(event: StepEvent, folder: str) -> _AppendAfter:
    def entry_of(head: _Head) -> tuple[_Entry, dict[str, Any]]:
        return _EventEntry(seq=head.next_event, event=event), {'next_event': head.next_event + 1}

    return _append_entry(_EVENT_KEYS, event.idempotency_key, folder, entry_of)


def _append_snapshot(snapshot: ContinuableSnapshot, object_key: str, folder: str) -> _AppendAfter:
    key = snapshot.idempotency_key

    def entry_of(head: _Head) -> tuple[_Entry, dict[str, Any]]:
        entry = _SnapshotEntry(seq=head.next_snapshot, object=object_key, state=snapshot.state, idempotency_key=key)
        update: dict[str, Any] = {'next_snapshot': head.next_snapshot + 1, 'latest': entry}
        if snapshot.state == 'complete':
            update['latest_complete'] = entry
        return entry, update

    return _append_entry(_SNAPSHOT_KEYS, key, folder, entry_of)


def _drop_sealed(segment: int, count: int) -> Callable[[_Head | None], Change[_Head | None, None]]:
    """Drop the first `count` open entries once segment `segment` holds them (a no-op if someone else did)."""

    def change(stored: _Head | None) -> Change[_Head | None, None]:
        head = _head_or_empty(stored)
        if head.sealed_segments != segment:
            return Change(None, None)
        return Change(head.model_copy(update={'open': head.open[count:], 'sealed_segments': segment + 1}), None)

    return change


def _peek(stored: _Head | None) -> Change[_Head | None, _Head | None]:
    """Read without writing: the head as the store last knew it (no request when it wrote it itself)."""
    return Change(None, stored)


class S3StepStore(S3Store):
    """A pydantic-ai-harness `StepStore` keeping each run in S3, for workers in any number of processes.

    ```python
    store = S3StepStore(bucket='my-bucket', prefix='agent-runs/')
    agent = Agent('openai:gpt-5', capabilities=[StepPersistence(store=store)])
    ```

    Takes `(bucket=..., prefix='', **options)`, as every store of this package does (see `S3Store`).
    """

    def __init__(self, *, bucket: str, prefix: str = '', **options: Unpack[S3Options]) -> None:
        super().__init__(bucket=bucket, prefix=prefix, **options)
        # Objects this store wrote or read recently, kept for the ETag they cache: a writer that is alone on a
        # run then changes them with one PUT, without reading them first.
        self._recent: OrderedDict[str, CasObject[Any]] = OrderedDict()

    # --- runs ---------------------------------------------------------------------------------------------------

    async def register_run(self, record: RunRecord) -> None:
        """Create the run's record; only a retry of the same registration (same `registration_id`) may find it.

        Raises `RunAlreadyRegisteredError` (a `ValueError`, as the harness's SQL stores raise) for any other.
        """
        run = self._run_object(record.run_id)

        def create(existing: RunRecord | None) -> Change[RunRecord | None, None]:
            if existing is None:
                return Change(record, None)
            if record.registration_id is not None and existing.registration_id == record.registration_id:
                return Change(None, None)
            raise RunAlreadyRegisteredError(record.run_id, f's3://{run.bucket}/{run.key}')

        await run.update(create, expect_missing=True)

    async def get_run(self, *, run_id: str) -> RunRecord | None:
        return await self._run_object(run_id).load()

    async def list_runs(
        self, *, parent_run_id: str | None = None, conversation_id: str | None = None
    ) -> list[RunRecord]:
        """Matching runs sorted by `started_at`: one listing of `runs/`, then each record read concurrently."""
        keys = [info.key async for info in self.location.list('runs/') if info.key.endswith('.json')]
        prefix_length = len(self.location.prefix)
        loaded = await asyncio.gather(*(self.location.object(key[prefix_length:], _RUN).load() for key in keys))
        records = [
            record
            for record in loaded
            if record is not None
            and (parent_run_id is None or record.parent_run_id == parent_run_id)
            and (conversation_id is None or record.conversation_id == conversation_id)
        ]
        return sorted(records, key=lambda record: record.started_at)

    # --- the log: events and snapshots ----------------------------------------------------------------------------

    async def append_event(self, event: StepEvent) -> None:
        """Append `event` with the next sequence number, unless its idempotency key was already stored."""
        key = event.idempotency_key
        lookup = await self._look_up(event.run_id, _EVENT_KEYS, key)
        if not lookup.found:
            await self._append(event.run_id, _append_event(event, self._folder(event.run_id)), _EVENT_KEYS, key, lookup)

    async def list_events(self, *, run_id: str) -> list[StepEvent]:
        """Every event of the run in sequence order: the head, then its sealed segments read concurrently."""
        entries = await self._log(run_id)
        return [entry.event for entry in entries if isinstance(entry, _EventEntry)]

    async def save_snapshot(self, snapshot: ContinuableSnapshot) -> None:
        """Store `snapshot` once (by idempotency key) and make it the run's latest.

        The snapshot is written to an object of its own before the head refers to it, so a reader never finds a
        reference to a snapshot that is not there. A key known to be stored already skips the upload.
        """
        key = snapshot.idempotency_key
        lookup = await self._look_up(snapshot.run_id, _SNAPSHOT_KEYS, key)
        if lookup.found:
            return
        object_key = f'snapshots/{uuid.uuid4().hex}.json'
        body = self._run_folder_object(snapshot.run_id, object_key, _SNAPSHOT)

        def create(existing: ContinuableSnapshot | None) -> Change[ContinuableSnapshot | None, None]:
            if existing is not None:  # a fresh random name: only our own earlier attempt can be there
                return Change(None, None)
            return Change(snapshot, None)

        await body.update(create, expect_missing=True)
        change = _append_snapshot(snapshot, object_key, self._folder(snapshot.run_id))
        if not await self._append(snapshot.run_id, change, _SNAPSHOT_KEYS, key, lookup):
            await self._discard(body)  # another writer saved this key first: the upload is referenced by nothing

    async def latest_snapshot(self, *, run_id: str, include_interrupted: bool = False) -> ContinuableSnapshot | None:
        """The newest snapshot (newest `complete` one unless `include_interrupted`): two GETs at any run length."""
        head = await self._head(run_id).load()
        if head is None:
            return None
        entry = head.latest if include_interrupted else head.latest_complete
        if entry is None:
            return None
        return await self._load_snapshot(run_id, entry)

    async def list_snapshots(self, *, run_id: str, include_interrupted: bool = False) -> list[ContinuableSnapshot]:
        """Every snapshot of the run in save order (only `complete` ones unless `include_interrupted`)."""
        entries = [
            entry
            for entry in await self._log(run_id)
            if isinstance(entry, _SnapshotEntry) and (include_interrupted or entry.state == 'complete')
        ]
        return list(await asyncio.gather(*(self._load_snapshot(run_id, entry) for entry in entries)))

    # --- tool effects ---------------------------------------------------------------------------------------------

    async def record_tool_effect(self, record: ToolEffectRecord) -> None:
        """Upsert the record of `(run_id, tool_call_id)` by compare-and-swap.

        A `started` record never replaces a `completed` or `failed` one: a late or replayed start must not make a
        finished call look in flight (and so be run again) after a crash.
        """

        def upsert(existing: ToolEffectRecord | None) -> Change[ToolEffectRecord | None, None]:
            if existing is not None and existing.status != 'started' and record.status == 'started':
                return Change(None, None)
            return Change(record, None)

        # A start is normally the call's first record: try to create it without reading first.
        creating = record.status == 'started'
        await self._tool_effect_object(record.run_id, record.tool_call_id).update(upsert, expect_missing=creating)

    async def get_tool_effect(self, *, run_id: str, tool_call_id: str) -> ToolEffectRecord | None:
        return await self._tool_effect_object(run_id, tool_call_id).load()

    async def list_unresolved_tool_effects(self, *, run_id: str) -> list[ToolEffectRecord]:
        """The run's tool calls whose latest record is `started`, oldest start first (a listing, then reads)."""
        folder = f'steps/{key_part(run_id, what="run_id")}/'
        prefix_length = len(self.location.prefix)
        keys = [info.key[prefix_length:] async for info in self.location.list(folder + 'tool-effects/')]
        loaded = await asyncio.gather(*(self.location.object(key, _TOOL_EFFECT, run_id=run_id).load() for key in keys))
        started = [record for record in loaded if record is not None and record.status == 'started']
        return sorted(started, key=lambda record: (record.started_at, record.tool_call_id))

    # --- internals -----------------------------------------------------------------------------------------------

    async def _append(
        self, run_id: str, change: _AppendAfter, kind: _KeyKind, key: str | None, lookup: _Lookup
    ) -> bool:
        """One compare-and-swap on the head, then, if the open end is full, seal its oldest segment.

        Returns whether the change appended anything (`False`: its idempotency key was already stored). The
        key lookup is made again only when racing writers marked more keys meanwhile than the head names
        (`MARKED_RECENTLY`): not a retry of a failure (`update` retries those) but a new read the pure change
        function cannot make itself. Each round needs that many keys marked by others; the retry policy's
        `max_attempts` bounds the rounds all the same.
        """
        head = self._head(run_id)
        started = time.monotonic()
        rounds = self.location.retry.max_attempts
        for _ in range(rounds):
            appended = await head.update(change(lookup), expect_missing=lookup.head_missing)
            if not appended.recheck:
                break
            lookup = await self._look_up(run_id, kind, key)
            if lookup.found:
                return False
        else:
            reason = f'more than {MARKED_RECENTLY} idempotency keys were marked by other writers during each append'
            raise RetriesExhaustedError(head.bucket, head.key, rounds, time.monotonic() - started, reason)
        if appended.to_seal:
            await self._seal(run_id, appended.segment, appended.to_seal)
        return appended.stored

    async def _look_up(self, run_id: str, kind: _KeyKind, key: str | None) -> _Lookup:
        """Whether `key` is known stored, from the head as this store last saw it, or else from its marker.

        The marker is read only for a custom key that the head does not cover while the head has marked keys:
        StepPersistence's own keys and unkeyed appends cost no request here (the head is usually cached).
        """
        stored = await self._head(run_id).update(_peek)
        if stored is None:
            return _Lookup(head_missing=True)
        head = stored
        if key is None:
            return _Lookup()
        marked = kind.marked(head)
        if kind.covered(head, key):
            return _Lookup(found=True, marked_before=marked)
        if marked == 0 or _key_index(key) is not None:
            return _Lookup(marked_before=marked)
        name = _marker_name(kind, key)
        body = await self._head(run_id).read_object(self._folder(run_id) + name)
        if body is not None and body != _marker_body(key):
            raise CorruptObjectError(
                self.location.bucket,
                self._folder(run_id) + name,
                'an idempotency key marker holds another key than its name says',
            )
        return _Lookup(found=body is not None, marked_before=marked)

    @staticmethod
    async def _discard(upload: CasObject[Any]) -> None:
        """Delete an object this store uploaded and nothing refers to (its name is random: no one else writes it)."""
        _, etag = await upload.load_versioned()
        if etag is not None:
            await upload.delete(etag)

    async def _seal(self, run_id: str, segment: int, entries: tuple[_EventEntry | _SnapshotEntry, ...]) -> None:
        """Write segment `segment` (create-only), then drop its entries from the head.

        Several writers may seal the same segment: they write the same entries, so a segment already there is
        checked, not rewritten. A writer that dies in between leaves the entries in the head, and the next
        append seals them again.
        """
        sealed = self._run_folder_object(run_id, f'log/{segment:08d}.json', _SEGMENT)

        def create(existing: _Segment | None) -> Change[_Segment | None, None]:
            if existing is None:
                return Change(entries, None)
            if existing != entries:
                raise S3PersistenceError(
                    sealed.bucket,
                    sealed.key,
                    'sealed log segment differs from the head it was sealed from; '
                    'it was left untouched. Another writer with a different layout may share this prefix.',
                )
            return Change(None, None)

        await sealed.update(create, expect_missing=True)
        await self._head(run_id).update(_drop_sealed(segment, len(entries)))

    async def _log(self, run_id: str) -> list[_EventEntry | _SnapshotEntry]:
        """The run's whole log in order: a fresh read of the head, then each sealed segment (immutable)."""
        head = await self._head(run_id).load()
        if head is None:
            return []
        segments = await asyncio.gather(
            *(
                self._run_folder_object(run_id, f'log/{n:08d}.json', _SEGMENT).load()
                for n in range(head.sealed_segments)
            )
        )
        entries: list[_EventEntry | _SnapshotEntry] = []
        for n, segment in enumerate(segments):
            if segment is None:
                raise S3PersistenceError(
                    self.location.bucket,
                    f'{self.location.prefix}steps/{key_part(run_id, what="run_id")}/log/{n:08d}.json',
                    'sealed log segment is missing though the head counts it. Restore it from a backup or '
                    'bucket versioning; the events it held cannot be listed without it.',
                )
            entries.extend(segment)
        entries.extend(head.open)
        return entries

    async def _load_snapshot(self, run_id: str, entry: _SnapshotEntry) -> ContinuableSnapshot:
        snapshot: ContinuableSnapshot | None = await self._run_folder_object(run_id, entry.object, _SNAPSHOT).load()
        if snapshot is None:
            raise S3PersistenceError(
                self.location.bucket,
                f'{self.location.prefix}steps/{key_part(run_id, what="run_id")}/{entry.object}',
                f'snapshot {entry.seq} is missing though the head refers to it. Restore it from a backup or '
                'bucket versioning.',
            )
        return snapshot

    def _head(self, run_id: str) -> CasObject[_Head | None]:
        return self._kept(run_id, 'head.json', _HEAD)

    def _kept(self, run_id: str, key: str, adapter: TypeAdapter[Any]) -> CasObject[Any]:
        """The object `key` of the run's folder, the same instance (and cached ETag) for the last 256 used."""
        name = f'{key_part(run_id, what="run_id")}/{key}'
        kept = self._recent.get(name)
        if kept is None:
            kept = self._recent[name] = self._run_folder_object(run_id, key, adapter)
            if len(self._recent) > 256:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(name)
        return kept

    def _folder(self, run_id: str) -> str:
        """The key of the run's folder in the bucket, ending with '/'."""
        return f'{self.location.prefix}steps/{key_part(run_id, what="run_id")}/'

    def _run_object(self, run_id: str) -> CasObject[RunRecord | None]:
        return self.location.object(f'runs/{key_part(run_id, what="run_id")}.json', _RUN, run_id=run_id)

    def _run_folder_object(self, run_id: str, key: str, adapter: TypeAdapter[Any]) -> CasObject[Any]:
        return self.location.object(f'steps/{key_part(run_id, what="run_id")}/{key}', adapter, run_id=run_id)

    def _tool_effect_object(self, run_id: str, tool_call_id: str) -> CasObject[ToolEffectRecord | None]:
        call = key_part(tool_call_id, what='tool_call_id')
        return self._kept(run_id, f'tool-effects/{call}.json', _TOOL_EFFECT)
