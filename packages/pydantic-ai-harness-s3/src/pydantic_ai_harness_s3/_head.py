"""A run's head: the one object every append to the run's log changes, and the pure change functions that do.

The head holds the open end of the run's log (at most a segment's worth of events and snapshot references, each
with the sequence number the head assigned), the recent idempotency keys, and references to the newest snapshot
and the newest `complete` one. An append is one compare-and-swap on the head, so sequence numbers are assigned in
one order, without gaps, and a key is checked and recorded in the same write that stores the event.

Idempotency keys: StepPersistence's own keys (`{index}:...`) are covered forever by an index floor (events) or
high-water mark (snapshots) in the head. Any other ("custom") key that leaves the head's window of `KEY_WINDOW`
keys gets a marker object under `keys/`, created by the same head update that drops it, before the head is
written: every key ever recorded is in the head or has a marker.
"""

from __future__ import annotations as _annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, TypeAdapter, model_serializer
from pydantic_ai_harness.step_persistence import SnapshotState, StepEvent

from pydantic_s3_cas import Change

SEGMENT_ENTRIES = 32
"""Log entries per sealed segment; the head holds at most this many."""
KEY_WINDOW = 64
"""Idempotency keys the head remembers exactly, per kind (events, snapshots)."""
MARKED_RECENTLY = 16
"""Custom keys the head names after moving them to markers, per kind: how far a marker lookup can be re-checked."""


class ChunkRef(BaseModel):
    """One immutable, content-addressed object holding consecutive messages of a run's history."""

    model_config = ConfigDict(frozen=True, extra='forbid')
    digest: str
    """SHA-256 of the chunk's bytes: its name (`chunks/{digest}.json`), checked on every read."""
    messages: int
    size: int
    """The chunk's length in bytes, for choosing which chunks to merge without reading them."""


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
    """The snapshot's key below the run's folder: `snapshots/{seq:012d}-{digest}.json` (older stores:
    `snapshots/{uuid}.json`, the whole snapshot inline)."""
    state: SnapshotState
    idempotency_key: str | None = None
    chunks: tuple[ChunkRef, ...] | None = None
    """The snapshot's history layout, kept on the head's `latest` only: the next save reuses its chunks
    without reading the snapshot."""

    @model_serializer(mode='wrap')
    def _without_layout(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Leave `chunks` out where it is not kept (log entries), as heads written before it had none."""
        data: dict[str, Any] = handler(self)
        if data['chunks'] is None:
            del data['chunks']
        return data


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
    max_snapshots_per_run: int | None = None
    """The bound of the last save that had one: every reader then lists only what that save kept."""

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
    'max_snapshots_per_run',
    'event_keys_marked',
    'event_keys_marked_recently',
    'snapshot_keys_marked',
    'snapshot_keys_marked_recently',
)
_HEAD = TypeAdapter(_Head)
_Segment = tuple[_EventEntry | _SnapshotEntry, ...]
_SEGMENT: TypeAdapter[_Segment] = TypeAdapter(tuple[_Entry, ...])


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
    """What an append decided: whether it stored anything.

    `recheck`: nothing was written because the append must look for its key's marker again first.
    """

    stored: bool
    recheck: bool = False


_Append = Callable[[_Head | None], Change[_Head | None, _Appended]]
_AppendAfter = Callable[[_Lookup], _Append]
"""An append's change, made from what its key lookup found."""


def _with_entry(
    head: _Head, entry: _EventEntry | _SnapshotEntry, folder: str, creates: _Creates = (), **update: Any
) -> Change[_Head | None, _Appended]:
    """The head with `entry` appended. When the stored head's open end holds `SEGMENT_ENTRIES` entries, the same
    write seals them: the segment is created before the head that no longer holds them, so an entry is always in
    the head, in a segment, or in both. Only entries of the stored head are sealed (never the one being appended,
    whose write may still lose the race), so every writer that seals segment n creates the same bytes."""
    opened, sealed = head.open, head.sealed_segments
    if len(opened) >= SEGMENT_ENTRIES:
        creates = (*creates, (f'{folder}log/{sealed:08d}.json', _SEGMENT.dump_json(opened[:SEGMENT_ENTRIES])))
        opened, sealed = opened[SEGMENT_ENTRIES:], sealed + 1
    new = head.model_copy(update={'open': (*opened, entry), 'sealed_segments': sealed, **update})
    return Change(new, _Appended(True), creates)


_EntryOf = Callable[['_Head'], tuple[_Entry, dict[str, Any], _Creates]]
"""The entry an append adds to a head, the head fields it sets, and the immutable objects it needs first."""


def _append_entry(kind: _KeyKind, key: str | None, folder: str, entry_of: _EntryOf) -> _AppendAfter:
    """The change that appends the entry `entry_of` makes for the head (with the head fields it sets, after the
    objects it needs are created), unless `key` was already stored."""

    def after(lookup: _Lookup) -> _Append:
        def change(stored: _Head | None) -> Change[_Head | None, _Appended]:
            head = _head_or_empty(stored)
            remembered: dict[str, Any] = {}
            creates: _Creates = ()
            if key is not None:
                if (decision := _decide(kind, head, key, lookup)).seen or decision.recheck:
                    return Change(None, _Appended(False, recheck=decision.recheck))
                remembered, creates = _remember_key(kind, head, key, folder)
            entry, update, needed = entry_of(head)
            return _with_entry(head, entry, folder, (*needed, *creates), **update, **remembered)

        return change

    return after


def _append_event(event: StepEvent, folder: str) -> _AppendAfter:
    def entry_of(head: _Head) -> tuple[_Entry, dict[str, Any], _Creates]:
        return _EventEntry(seq=head.next_event, event=event), {'next_event': head.next_event + 1}, ()

    return _append_entry(_EVENT_KEYS, event.idempotency_key, folder, entry_of)


_SnapshotObject = Callable[['_Head', int], tuple[str, tuple[ChunkRef, ...], _Creates]]
"""For a head and the sequence number it gives a snapshot: the snapshot object's name below the run's folder,
its history layout, and the objects (chunks, the snapshot object) to create before the head refers to them."""


def _append_snapshot(
    key: str | None, state: SnapshotState, folder: str, build: _SnapshotObject, keep: int | None
) -> _AppendAfter:
    def entry_of(head: _Head) -> tuple[_Entry, dict[str, Any], _Creates]:
        seq = head.next_snapshot
        name, layout, creates = build(head, seq)
        entry = _SnapshotEntry(seq=seq, object=name, state=state, idempotency_key=key)
        update: dict[str, Any] = {
            'next_snapshot': seq + 1,
            'latest': entry.model_copy(update={'chunks': layout}),
        }
        if state == 'complete':
            update['latest_complete'] = entry
        if keep is not None:
            update['max_snapshots_per_run'] = keep
        return entry, update, creates

    return _append_entry(_SNAPSHOT_KEYS, key, folder, entry_of)


def _retained(head: _Head, entry: _SnapshotEntry) -> bool:
    """Whether the head's `max_snapshots_per_run` keeps the snapshot: one of the newest N, or the newest `complete`
    one (the newest overall is always among the newest N). As the harness's stores decide."""
    keep = head.max_snapshots_per_run
    if keep is None or entry.seq >= head.next_snapshot - keep:
        return True
    return head.latest_complete is not None and head.latest_complete.seq == entry.seq


def _peek(stored: _Head | None) -> Change[_Head | None, _Head | None]:
    """Read without writing: the head as the store last knew it (no request when it wrote it itself)."""
    return Change(None, stored)
