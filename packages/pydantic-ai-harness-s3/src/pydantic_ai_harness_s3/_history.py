"""Message-once storage: a snapshot names the chunks of its history, and each chunk is stored once.

A chunk is an immutable object `chunks/{sha256}.json` in the run's folder holding consecutive messages as a JSON
list (each message as `json.dumps(..., separators=(',', ':'))` of its JSON form, after media externalization).
A snapshot object holds the snapshot's fields and its layout: the chunks that, concatenated, are its messages.

A save reuses the longest prefix of the previous snapshot's layout whose chunks its own messages reproduce byte
for byte (checked by hashing its own messages: nothing is downloaded), puts its remaining messages in one new
chunk, and keeps a layout of at most `MAX_CHUNKS` chunks by merging the newest ones into one when there are more
(the smallest run of newest chunks whose total is no larger than the chunk before it). So a save uploads one chunk,
normally just its new messages, and a read downloads at most `MAX_CHUNKS` chunks, in parallel: their total is the
history. Merging rewrites a message about log(steps) times over a run (about 2.4 times by step 120, 3.8 by
step 1,000), in the few saves that merge.
"""

from __future__ import annotations as _annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_ai_harness.media import MediaContext, externalize_media, media_uri_for
from pydantic_ai_harness.step_persistence import ContinuableSnapshot, SnapshotState

from ._head import ChunkRef

__all__ = ('MAX_CHUNKS', 'History', 'StoredSnapshot', 'plan_layout', 'reused_messages', 'chunk_name')

MAX_CHUNKS = 10
"""Chunks a snapshot's history is kept in at most: what a read of it costs, in requests, besides head and snapshot."""

_EMPTY_CONTEXT = MediaContext()
_MEDIA_URI_MARK = 'media+sha256://'


def chunk_name(digest: str) -> str:
    """The chunk's key below the run's folder."""
    return f'chunks/{digest}.json'


def _chunk_body(texts: list[str]) -> bytes:
    return ('[' + ','.join(texts) + ']').encode()


class _Recorder:
    """A `MediaStore` that only names bytes: externalization without uploading, to learn the stored form first."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, MediaContext]] = {}

    async def put(self, data: bytes, *, context: MediaContext = _EMPTY_CONTEXT) -> str:
        uri = media_uri_for(data)
        self.blobs.setdefault(uri, (data, context))
        return uri

    async def get(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> bytes:
        return self.blobs[uri][0]

    async def exists(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> bool:
        return uri in self.blobs

    async def public_url(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> str | None:
        return None

    async def get_metadata(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> Mapping[str, str]:
        return self.blobs[uri][1].metadata


@dataclass
class History:
    """A snapshot's messages in their stored form: one JSON text per message, and the media they left out."""

    texts: list[str]
    media: dict[str, tuple[bytes, MediaContext]] = field(default_factory=dict)

    @classmethod
    async def of(cls, messages: list[ModelMessage], *, threshold: int | None) -> History:
        """Serialize `messages`; parts of `threshold` bytes or more become media references (`None`: none do)."""
        tree: Any = ModelMessagesTypeAdapter.dump_python(messages, mode='json')
        recorder = _Recorder()
        if threshold is not None:
            tree = await externalize_media(tree, media_store=recorder, threshold_bytes=threshold)
        return cls([json.dumps(message, separators=(',', ':')) for message in tree], recorder.blobs)

    def media_after(self, reused: int) -> dict[str, tuple[bytes, MediaContext]]:
        """The media the messages after the first `reused` refer to that those first messages do not: what a save
        uploads (the reused messages' media were uploaded by the save that first stored them)."""
        if not self.media:
            return {}
        earlier = ''.join(self.texts[:reused])
        return {uri: blob for uri, blob in self.media.items() if uri not in earlier}

    def chunk(self, start: int, end: int) -> tuple[ChunkRef, bytes]:
        body = _chunk_body(self.texts[start:end])
        return ChunkRef(digest=hashlib.sha256(body).hexdigest(), messages=end - start, size=len(body)), body


def reused_messages(previous: tuple[ChunkRef, ...], history: History) -> tuple[int, int]:
    """How many of `previous`'s chunks, and so how many messages, `history` reproduces byte for byte."""
    position = 0
    for count, ref in enumerate(previous):
        end = position + ref.messages
        if end > len(history.texts) or history.chunk(position, end)[0] != ref:
            return count, position
        position = end
    return len(previous), position


def plan_layout(
    previous: tuple[ChunkRef, ...], history: History
) -> tuple[tuple[ChunkRef, ...], tuple[tuple[str, bytes], ...]]:
    """The layout of `history`, reusing `previous`'s chunks, and the one new chunk to create (name, bytes), if any.

    Past `MAX_CHUNKS`, the newest chunks are merged: the fewest newest ones whose total size is at most the
    size of the chunk before them (all of them if none is), so sizes shrink from oldest to newest and merges stay
    rare and mostly small.
    """
    kept, start = reused_messages(previous, history)
    total = len(history.texts)
    if start == total:
        return previous[:kept], ()
    layout = [*previous[:kept], history.chunk(start, total)[0]]
    if len(layout) > MAX_CHUNKS:
        merge_from = 0
        for first in range(len(layout) - 2, 0, -1):
            if sum(ref.size for ref in layout[first:]) <= layout[first - 1].size:
                merge_from = first
                break
        start = sum(ref.messages for ref in layout[:merge_from])
        layout[merge_from:] = [history.chunk(start, total)[0]]
    ref, body = history.chunk(start, total)
    return tuple(layout), ((chunk_name(ref.digest), body),)


class StoredSnapshot(BaseModel):
    """A snapshot object of the message-once layout: the snapshot's fields and the chunks of its history."""

    model_config = ConfigDict(frozen=True, extra='forbid')
    format: Literal[2] = 2
    run_id: str
    step_index: int
    conversation_id: str | None = None
    parent_run_id: str | None = None
    agent_name: str | None = None
    timestamp: datetime
    state: SnapshotState
    idempotency_key: str | None = None
    chunks: tuple[ChunkRef, ...]

    @classmethod
    def of(cls, snapshot: ContinuableSnapshot, chunks: tuple[ChunkRef, ...]) -> StoredSnapshot:
        fields = {name: getattr(snapshot, name) for name in _SNAPSHOT_FIELDS}
        return cls(**fields, chunks=chunks)

    def with_messages(self, messages: list[ModelMessage]) -> ContinuableSnapshot:
        return ContinuableSnapshot(**{name: getattr(self, name) for name in _SNAPSHOT_FIELDS}, messages=messages)


_SNAPSHOT_FIELDS = tuple(field.name for field in dataclass_fields(ContinuableSnapshot) if field.name != 'messages')
STORED_SNAPSHOT = TypeAdapter(StoredSnapshot)
LEGACY_SNAPSHOT = TypeAdapter(ContinuableSnapshot)
"""Snapshot objects written before message-once storage: the whole snapshot, messages inline."""


def snapshot_object(snapshot: ContinuableSnapshot, layout: tuple[ChunkRef, ...], seq: int) -> tuple[str, bytes]:
    """The snapshot object's name below the run's folder and its bytes. Named by sequence number, so retention
    finds it with one listing, and by a random part, so that every attempt's object is its own: a writer that
    lost the race for the head deletes its attempts without touching another writer's."""
    body = STORED_SNAPSHOT.dump_json(StoredSnapshot.of(snapshot, layout))
    return f'snapshots/{seq:012d}-{uuid.uuid4().hex[:16]}.json', body


def parse_chunk(body: bytes, ref: ChunkRef) -> list[Any] | None:
    """The chunk's messages (JSON form), or `None` when the bytes are not the chunk `ref` names."""
    if len(body) != ref.size or hashlib.sha256(body).hexdigest() != ref.digest:
        return None
    messages: list[Any] = json.loads(body)
    return messages if len(messages) == ref.messages else None


def has_media(body: bytes) -> bool:
    return _MEDIA_URI_MARK.encode() in body
