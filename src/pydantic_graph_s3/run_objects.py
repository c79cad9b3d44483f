"""The objects under one prefix as an operator's tools see them: heads, their history, and which run owns what.

`RunObjects` is what `RunStore` and the operations beside it (`archive`, `cleanup`, `usage`) share: the listing,
reads counted in one `CasStats`, and the rules for which key belongs to which run. A run is `{prefix}{run_id}.json`
(its head); its sealed history is `{prefix}{run_id}~{segment_id}~{seq:08d}.json` (`layout.parse_segment_key`), and only
a key of exactly that form is ever taken for a run's: other keys with a `~` (`notes.txt~`, `x~y/z.json`), and keys of
deeper prefixes (`{prefix}q~/...`, another deployment's runs), are nobody's. Nothing here needs the graph's code.
"""

from __future__ import annotations as _annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import anyio

from pydantic_s3_cas import (
    CasObject,
    CasStats,
    Codec,
    CorruptObjectError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    RetryPolicy,
    list_objects,
    storage_deadline,
)

from .layout import decode_head, parse_segment_key, render_list
from .persistence import logger, read_sealed, run_object_key, validate_run_id

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ('CREATE_WINDOW', 'RunObjects', 'RunSummary')

T = TypeVar('T')

CREATE_WINDOW = timedelta(hours=1)
"""How long an import or a fork may take from its first write to its head: it gives up (`DeadlineExceededError`,
nothing readable written) past it. Both write a new run's segments before its head, so for that long those
segments have no head; `cleanup.ORPHAN_GRACE`, which a headless segment must be older than to be swept, is far
longer."""


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
    segment_id: str | None = None
    """The id in the names of its sealed history's segments (`None`: never sealed, or not read)."""


class RawBytes:
    """The stored bytes as they are (`None`: no object), for reading and create-only writing."""

    def decode(self, body: bytes) -> bytes | None:
        return body

    def encode(self, value: bytes | None) -> bytes:
        assert value is not None, 'a change never writes the empty value'
        return value

    def empty(self) -> bytes | None:
        return None


@dataclass(frozen=True)
class RunObjects:
    """The objects under `s3://{bucket}/{prefix}`; every request is counted in `request_stats`."""

    bucket: str
    prefix: str
    client: Callable[[], Awaitable[S3Client]]
    retry: RetryPolicy
    max_object_bytes: int | None
    request_stats: CasStats
    page_size: int = 1000
    read_concurrency: int = 16

    def pages(self, prefix: str | None = None) -> AsyncIterator[list[ObjectInfo]]:
        """Every object under the prefix (or the deeper `prefix`), a listing page at a time."""
        return list_objects(
            self.client,
            self.bucket,
            self.prefix if prefix is None else prefix,
            retry=self.retry,
            stats=self.request_stats,
            page_size=self.page_size,
            logger=logger,
        )

    def run_id_of(self, key: str) -> str | None:
        """The run whose head `{prefix}{run_id}.json` is (`None` for any other key)."""
        name = key[len(self.prefix) :]
        if not name.endswith('.json'):
            return None
        try:
            return validate_run_id(name.removesuffix('.json'))
        except ValueError:
            return None  # a nested prefix, or an object that is not a run

    def segment_of(self, key: str) -> tuple[str, str, int] | None:
        """`(run_id, segment_id, seq)` of the segment `key` is, exactly (`None` for any other key: see
        `layout.parse_segment_key`)."""
        return parse_segment_key(self.prefix, key)

    async def head_exists(self, run_id: str) -> bool:
        """Whether the run has a head now: a listing of its key alone (strongly consistent; no body read)."""
        key = run_object_key(self.prefix, run_id)
        async for page in self.pages(key):
            if any(info.key == key for info in page):
                return True
        return False

    @contextmanager
    def creating(self) -> Iterator[None]:
        """Bound the creation of a run with history (an import, a fork) to `CREATE_WINDOW`, see there."""
        with storage_deadline(time.monotonic() + CREATE_WINDOW.total_seconds()):
            yield

    def object(self, key: str) -> CasObject[bytes | None]:
        return self.cas_object(key, RawBytes())

    def cas_object(self, key: str, codec: Codec[T]) -> CasObject[T]:
        return CasObject(
            bucket=self.bucket,
            key=key,
            codec=codec,
            client=self.client,
            retry=self.retry,
            max_object_bytes=self.max_object_bytes,
            stats=self.request_stats,
            labels={'run_id': self.run_id_of(key) or ''},
            logger=logger,
        )

    async def read(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and ETag now; `ObjectNotFoundError` when there is none."""
        body, etag = await self.object(key).load_versioned()
        if body is None or etag is None:
            raise ObjectNotFoundError(self.bucket, key)
        return body, etag

    async def assemble(self, key: str, head_body: bytes) -> bytes:
        """The run's whole snapshot list as one File-format list: the head itself while it was never sealed."""
        try:
            head = decode_head(head_body)
        except ValueError as e:
            raise CorruptObjectError(self.bucket, key, str(e).splitlines()[0]) from e
        if not head.segmented:
            return head_body
        sealed = await read_sealed(self.object(key), head)
        return render_list([e.raw for e in (*sealed.elements, *head.snapshots)])

    async def get_run(self, run_id: str) -> RunSummary:
        """See `RunStore.get_run`."""
        key = run_object_key(self.prefix, run_id)
        async for page in self.pages(key):
            for info in page:
                if info.key == key and (summary := await self.summarize(run_id, info)) is not None:
                    return summary
        raise ObjectNotFoundError(self.bucket, key)

    async def runs(self, *, decode: bool) -> AsyncIterator[RunSummary]:
        """Every run under the prefix, a listing page at a time; with `decode`, each read (see `RunStore.list_runs`)."""
        async for page in self.pages():
            infos = [(run_id, info) for info in page if (run_id := self.run_id_of(info.key)) is not None]
            if not decode:
                for run_id, info in infos:
                    yield RunSummary(run_id, info.key, info.size, info.last_modified, info.etag)
                continue
            for summary in await self._summarize_all(infos):
                if summary is not None:
                    yield summary

    async def _summarize_all(self, infos: Sequence[tuple[str, ObjectInfo]]) -> list[RunSummary | None]:
        summaries: list[RunSummary | None] = [None] * len(infos)
        limiter = anyio.CapacityLimiter(self.read_concurrency)

        async def read(index: int, run_id: str, info: ObjectInfo) -> None:
            async with limiter:
                summaries[index] = await self.summarize(run_id, info)

        async with anyio.create_task_group() as group:
            for index, (run_id, info) in enumerate(infos):
                group.start_soon(read, index, run_id, info)
        return summaries

    async def summarize(self, run_id: str, info: ObjectInfo) -> RunSummary | None:
        """The run read now (`None` if it was deleted since it was listed)."""
        try:
            body, etag = await self.read(info.key)
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
            segment_id=head.segment_id,
            snapshots=head.total_snapshots,
            last_status=None if last is None else last.status,
            ended=last is not None and last.kind == 'end',
        )
