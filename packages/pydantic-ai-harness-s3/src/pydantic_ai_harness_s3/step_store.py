"""`S3StepStore`: pydantic-ai-harness's `StepStore` in S3, safe across processes by compare-and-swap.

Key layout under the store's prefix (`{rid}` is the percent-encoded run id):

```text
runs/{rid}.json                        RunRecord; created once (If-None-Match), never rewritten
runs-index.json                        list_runs' memo of records by ETag (`_run_index`), a cache
steps/{rid}/head.json                  the run's head: the one object every append changes (If-Match; `_head`)
steps/{rid}/log/{n:08d}.json           sealed segment n: 32 log entries, immutable
steps/{rid}/snapshots/{seq:012d}-{random}.json   a snapshot's fields and history layout, immutable (`_history`)
steps/{rid}/chunks/{sha256}.json       consecutive messages of the history, content-addressed, immutable
steps/{rid}/media/{sha256}.bin         media left out of the history (media_store='auto'), immutable
steps/{rid}/keys/{kind}/{sha256}.json  a custom idempotency key that left the head's window; create-only, immutable
steps/{rid}/tool-effects/{tcid}.json   one ToolEffectRecord per tool call, changed by compare-and-swap
```

Every object the head refers to is created before the head is written, so a reader never follows a reference to
an object that is not there, and a writer that dies leaves only objects that nothing refers to.
"""

from __future__ import annotations as _annotations

import asyncio
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any, Literal, overload

from pydantic import TypeAdapter
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai_harness.media import MediaStore, restore_media
from pydantic_ai_harness.step_persistence import ContinuableSnapshot, RunRecord, StepEvent, ToolEffectRecord
from typing_extensions import Unpack

from pydantic_s3_cas import CasObject, Change, CorruptObjectError, RetriesExhaustedError, S3PersistenceError, quoted

from ._head import (
    _EVENT_KEYS,
    _HEAD,
    _SEGMENT,
    _SNAPSHOT_KEYS,
    KEY_WINDOW,
    MARKED_RECENTLY,
    SEGMENT_ENTRIES,
    _append_event,
    _append_snapshot,
    _AppendAfter,
    _EventEntry,
    _Head,
    _key_index,
    _KeyKind,
    _Lookup,
    _marker_body,
    _marker_name,
    _peek,
    _retained,
    _Segment,
    _SnapshotEntry,
)
from ._history import (
    LEGACY_SNAPSHOT,
    STORED_SNAPSHOT,
    History,
    StoredSnapshot,
    chunk_name,
    has_media,
    parse_chunk,
    plan_layout,
    reused_messages,
)
from ._history import snapshot_object as _snapshot_object
from ._location import S3Options, S3Store, key_part
from ._objects import RunMediaStore, delete_immutable, delete_listed
from ._run_index import read_runs

__all__ = ('S3StepStore', 'RunAlreadyRegisteredError', 'SEGMENT_ENTRIES', 'KEY_WINDOW', 'MARKED_RECENTLY')

DEFAULT_MEDIA_THRESHOLD_BYTES = 64 * 1024
"""As the harness's stores: binary and text parts this large or larger are stored apart from the history."""

_RUN = TypeAdapter(RunRecord)
_TOOL_EFFECT = TypeAdapter(ToolEffectRecord)
_RUN_FOLDERS = ('head.json', 'log/', 'snapshots/', 'chunks/', 'media/', 'tool-effects/', 'keys/')
"""What a run's folder holds: `delete_run` deletes these and nothing else it may find there."""


class RunAlreadyRegisteredError(ValueError):
    """`register_run` found the run id registered by another registration; nothing was overwritten."""

    def __init__(self, run_id: str, uri: str) -> None:
        self.run_id = run_id
        super().__init__(
            f'{uri}: run {quoted(run_id)} is already in the store (registered by another registration) and was left '
            'untouched. '
            'A run id is single-shot: use a new run id, and conversation_id= to group runs.'
        )


class S3StepStore(S3Store):
    """A pydantic-ai-harness `StepStore` keeping each run in S3, for workers in any number of processes.

    ```python
    store = S3StepStore(bucket='my-bucket', prefix='agent-runs/')
    agent = Agent('openai:gpt-5', capabilities=[StepPersistence(store=store)])
    ```

    Takes `(bucket=..., prefix='', **options)`, as every store of this package does (see `S3Store`).
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = '',
        max_snapshots_per_run: int | None = None,
        media_store: MediaStore | Literal['auto'] | None = 'auto',
        media_threshold_bytes: int = DEFAULT_MEDIA_THRESHOLD_BYTES,
        **options: Unpack[S3Options],
    ) -> None:
        """`max_snapshots_per_run`: keep only the newest N snapshots of a run, and always its newest `complete`
        one, as the harness's stores do (`None`: keep all). `media_store`: where binary and text parts of
        `media_threshold_bytes` or more go instead of the history: `'auto'` (the run's folder in this bucket),
        any harness `MediaStore`, or `None` (kept inline)."""
        if max_snapshots_per_run is not None and (
            not isinstance(max_snapshots_per_run, int) or isinstance(max_snapshots_per_run, bool)
        ):
            raise ValueError(f'max_snapshots_per_run must be an int >= 1 or None, got {quoted(max_snapshots_per_run)}')
        if max_snapshots_per_run is not None and max_snapshots_per_run < 1:
            raise ValueError(f'max_snapshots_per_run must be >= 1 or None, got {max_snapshots_per_run}')
        super().__init__(bucket=bucket, prefix=prefix, **options)
        self.max_snapshots_per_run = max_snapshots_per_run
        self.media_store = media_store
        self.media_threshold_bytes = media_threshold_bytes
        # Objects this store wrote or read recently, kept for the ETag they cache: a writer that is alone on a
        # run then changes them with one PUT, without reading them first.
        self._recent: OrderedDict[str, CasObject[Any]] = OrderedDict()

    async def aclose(self) -> None:
        """Forget what this store cached (the S3 client stays open: see `S3Store.aclose`)."""
        self._recent.clear()
        await super().aclose()

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
        """Matching runs sorted by `started_at`: one listing of `runs/` and one GET of the memo of records read
        before (`_run_index`); only records the memo lacks are read, concurrently."""
        listed = [info async for info in self.location.list('runs/') if info.key.endswith('.json')]
        prefix_length = len(self.location.prefix)

        async def load(key: str) -> RunRecord | None:
            record: RunRecord | None = await self.location.object(key[prefix_length:], _RUN).load()
            return record

        loaded = await read_runs(self.location, listed, load)
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
        """Store `snapshot` once (by idempotency key) and make it the run's latest, uploading only what the run
        has not stored yet: the chunk of its new messages, its new media, and a small snapshot object.

        Everything the head will refer to is created before the head is written (the change's `creates`), so a
        reader never follows a reference to an object that is not there, and a crash leaves only objects that
        nothing refers to.
        """
        run_id, key = snapshot.run_id, snapshot.idempotency_key
        lookup = await self._look_up(run_id, _SNAPSHOT_KEYS, key)
        if lookup.found:
            return
        externalize = self.media_store is not None
        history = await History.of(snapshot.messages, threshold=self.media_threshold_bytes if externalize else None)
        before = None if lookup.head_missing else await self._head(run_id).update(_peek)  # cached by the lookup
        if history.media:
            previous = before.latest.chunks if before is not None and before.latest is not None else None
            _, reused = reused_messages(previous or (), history)
            media = self._media(run_id)
            for data, context in history.media_after(reused).values():
                await media.put(data, context=context)

        built: list[str] = []

        def build(head: _Head, seq: int) -> tuple[str, Any, tuple[tuple[str, bytes], ...]]:
            previous = head.latest.chunks if head.latest is not None else None
            layout, chunks = plan_layout(previous or (), history)
            name, body = _snapshot_object(snapshot, layout, seq)
            built.append(name)
            folder = self._folder(run_id)
            return name, layout, (*((folder + chunk, data) for chunk, data in chunks), (folder + name, body))

        change = _append_snapshot(key, snapshot.state, self._folder(run_id), build, self.max_snapshots_per_run)
        stored = await self._append(run_id, change, _SNAPSHOT_KEYS, key, lookup)
        # Attempts that lost the head to another writer created snapshot objects nothing refers to.
        for name in built[:-1] if stored else built:
            await delete_immutable(self.location, self._folder(run_id) + name)
        if stored and self.max_snapshots_per_run:
            await self._prune_snapshots(run_id, before)

    async def latest_snapshot(self, *, run_id: str, include_interrupted: bool = False) -> ContinuableSnapshot | None:
        """The newest snapshot (newest `complete` one unless `include_interrupted`): the head, the snapshot
        object, then its history's chunks (at most `MAX_CHUNKS`) in parallel."""
        head = await self._head(run_id).load()
        if head is None:
            return None
        entry = head.latest if include_interrupted else head.latest_complete
        if entry is None:
            return None
        return await self._load_snapshot(run_id, entry)

    async def list_snapshots(self, *, run_id: str, include_interrupted: bool = False) -> list[ContinuableSnapshot]:
        """Every retained snapshot of the run in save order (only `complete` ones unless `include_interrupted`)."""
        head = await self._head(run_id).load()
        entries = [
            entry
            for entry in await self._log(run_id, head)
            if isinstance(entry, _SnapshotEntry)
            and (include_interrupted or entry.state == 'complete')
            and head is not None
            and _retained(head, entry)
        ]
        # A run whose bound was raised later lists what the smaller bound kept: the rest is gone.
        pruned_once = head is not None and head.max_snapshots_per_run is not None
        loaded = await asyncio.gather(*(self._load_snapshot(run_id, entry, pruned_once) for entry in entries))
        return [snapshot for snapshot in loaded if snapshot is not None]

    # --- deleting runs ----------------------------------------------------------------------------------------

    async def delete_run(self, run_id: str) -> bool:
        """Delete every object of the run (record, head, log, snapshots, chunks, media, tool effects, key markers)
        and nothing else: the run's folder holds only its own objects (ids are percent-encoded, so no other run's
        folder starts with this one's). The head goes first, so a reader sees no run from then on; a delete cut
        short can be made again. Returns whether the run had a record or a head."""
        folder = f'steps/{key_part(run_id, what="run_id")}/'
        self._forget(run_id)
        listed = [info async for info in self.location.list(folder)]
        ours = [info for info in listed if info.key[len(self.location.prefix + folder) :].startswith(_RUN_FOLDERS)]
        head_key = self.location.prefix + folder + 'head.json'
        had_head = await delete_listed(self.location, [info for info in ours if info.key == head_key])
        await delete_listed(self.location, [info for info in ours if info.key != head_key])
        record, etag = await self._run_object(run_id).load_versioned()
        if etag is not None:
            await self._run_object(run_id).delete(etag)
        return bool(had_head) or record is not None

    async def prune(self, *, ended_before: datetime, dry_run: bool = False) -> list[str]:
        """Delete (`dry_run`: only name) the runs whose last write (the head's, else the record's) is before
        `ended_before`, a timezone-aware time. Returns their ids, oldest start first."""
        if ended_before.tzinfo is None:
            raise ValueError('ended_before must be timezone-aware (e.g. datetime(..., tzinfo=UTC))')
        stale: list[str] = []
        for record in await self.list_runs():
            folder = f'steps/{key_part(record.run_id, what="run_id")}/head.json'
            heads = [info async for info in self.location.list(folder) if info.key.endswith('/head.json')]
            if heads:
                last_write = heads[0].last_modified
            else:
                listed = [info async for info in self.location.list(self._run_key(record.run_id))]
                if not listed:
                    continue
                last_write = listed[0].last_modified
            if last_write < ended_before:
                stale.append(record.run_id)
        if not dry_run:
            for run_id in stale:
                await self.delete_run(run_id)
        return stale

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
        """One compare-and-swap on the head (sealing a segment in the same write when the open end is full).

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

    async def _log(self, run_id: str, head: _Head | None = None) -> list[_EventEntry | _SnapshotEntry]:
        """The run's whole log in order: the head (read afresh unless given), then each sealed segment."""
        if head is None:
            head = await self._head(run_id).load()
        if head is None:
            return []
        segments = await asyncio.gather(*(self._segment(run_id, n).load() for n in range(head.sealed_segments)))
        entries: list[_EventEntry | _SnapshotEntry] = []
        for n, segment in enumerate(segments):
            if segment is None:
                raise S3PersistenceError(
                    self.location.bucket,
                    f'{self._folder(run_id)}log/{n:08d}.json',
                    'sealed log segment is missing though the head counts it. Restore it from a backup or '
                    'bucket versioning; the events it held cannot be listed without it.',
                )
            entries.extend(segment)
        entries.extend(head.open)
        return entries

    def _segment(self, run_id: str, n: int) -> CasObject[_Segment | None]:
        return self._run_folder_object(run_id, f'log/{n:08d}.json', _SEGMENT)

    @overload
    async def _load_snapshot(self, run_id: str, entry: _SnapshotEntry) -> ContinuableSnapshot: ...
    @overload
    async def _load_snapshot(
        self, run_id: str, entry: _SnapshotEntry, missing_ok: bool
    ) -> ContinuableSnapshot | None: ...

    async def _load_snapshot(
        self, run_id: str, entry: _SnapshotEntry, missing_ok: bool = False
    ) -> ContinuableSnapshot | None:
        """The snapshot `entry` refers to: a message-once snapshot object and its chunks, or an older inline one."""
        folder = self._folder(run_id)
        body = await self._head(run_id).read_object(folder + entry.object)
        if body is None and missing_ok:
            return None
        if body is None:
            raise S3PersistenceError(
                self.location.bucket,
                folder + entry.object,
                f'snapshot {entry.seq} is missing though the head refers to it. Restore it from a backup or '
                'bucket versioning.',
            )
        try:
            if not body.startswith(b'{"format":2'):
                snapshot: ContinuableSnapshot = LEGACY_SNAPSHOT.validate_json(body)
                return snapshot
            stored: StoredSnapshot = STORED_SNAPSHOT.validate_json(body)
        except ValueError as e:
            raise CorruptObjectError(self.location.bucket, folder + entry.object, str(e).splitlines()[0]) from e
        bodies = await asyncio.gather(
            *(self._head(run_id).read_object(folder + chunk_name(ref.digest)) for ref in stored.chunks)
        )
        tree: list[Any] = []
        media = False
        for ref, chunk in zip(stored.chunks, bodies, strict=True):
            messages = None if chunk is None else parse_chunk(chunk, ref)
            if chunk is None or messages is None:
                raise CorruptObjectError(
                    self.location.bucket,
                    folder + chunk_name(ref.digest),
                    'a chunk of the history is missing or is not what its snapshot names. Restore it from a backup '
                    'or bucket versioning.',
                )
            tree.extend(messages)
            media = media or has_media(chunk)
        if media:
            tree = await restore_media(tree, media_store=self._media(run_id))  # type: ignore[assignment]
        return stored.with_messages(ModelMessagesTypeAdapter.validate_python(tree))

    def _media(self, run_id: str) -> MediaStore:
        if self.media_store is None or self.media_store == 'auto':
            return RunMediaStore(self.location, self._folder(run_id))
        return self.media_store

    async def _prune_snapshots(self, run_id: str, before: _Head | None) -> None:
        """Delete the snapshot objects this save took out of `max_snapshots_per_run`'s window: the one that fell
        out of the newest N, and the newest `complete` one before, if it was replaced and is out of the window.

        Only objects of those sequence numbers are deleted (a listing of `snapshots/{seq:012d}-`), and only
        when the head no longer retains them; chunks and media stay (a kept snapshot may need them) until
        `delete_run`. A save that dies before this leaves an object no reader follows.
        """
        head = await self._head(run_id).update(_peek)
        if head is None:
            return
        candidates = [head.next_snapshot - 1 - self.max_snapshots_per_run]  # type: ignore[operator]
        if before is not None and before.latest_complete is not None:
            candidates.append(before.latest_complete.seq)
        for seq in candidates:
            if seq < 0 or _retained(head, _SnapshotEntry(seq=seq, object='', state='interrupted')):
                continue
            known = [entry.object for entry in head.open if isinstance(entry, _SnapshotEntry) and entry.seq == seq]
            if known:
                await delete_immutable(self.location, self._folder(run_id) + known[0])
                continue
            folder = self._folder(run_id)[len(self.location.prefix) :]
            await delete_listed(
                self.location, [info async for info in self.location.list(f'{folder}snapshots/{seq:012d}-')]
            )

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

    def _forget(self, run_id: str) -> None:
        """Drop the cached objects of the run (its head's ETag among them)."""
        mark = f'{key_part(run_id, what="run_id")}/'
        for name in [name for name in self._recent if name.startswith(mark)]:
            del self._recent[name]

    def _run_key(self, run_id: str) -> str:
        return f'runs/{key_part(run_id, what="run_id")}.json'

    def _folder(self, run_id: str) -> str:
        """The key of the run's folder in the bucket, ending with '/'."""
        return f'{self.location.prefix}steps/{key_part(run_id, what="run_id")}/'

    def _run_object(self, run_id: str) -> CasObject[RunRecord | None]:
        return self.location.object(self._run_key(run_id), _RUN, run_id=run_id)

    def _run_folder_object(self, run_id: str, key: str, adapter: TypeAdapter[Any]) -> CasObject[Any]:
        return self.location.object(f'steps/{key_part(run_id, what="run_id")}/{key}', adapter, run_id=run_id)

    def _tool_effect_object(self, run_id: str, tool_call_id: str) -> CasObject[ToolEffectRecord | None]:
        call = key_part(tool_call_id, what='tool_call_id')
        return self._kept(run_id, f'tool-effects/{call}.json', _TOOL_EFFECT)
