"""Where a store keeps its objects, and how it talks to S3: what `S3StepStore` and `S3MemoryStore` share.

Both stores take the options of pydantic-graph-s3's `S3StatePersistence` (`client`, `session`,
`client_settings`, `retry`: the fields of `pydantic_s3_cas.S3Connection`, which checks the bucket name and
prefix at construction) and hand every write to `pydantic_s3_cas.CasObject`, the one compare-and-swap
primitive of this repository.
"""

from __future__ import annotations as _annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Self, TypedDict, TypeVar
from urllib.parse import quote

import aioboto3
from pydantic import TypeAdapter
from typing_extensions import Unpack

from pydantic_s3_cas import CasObject, CasStats, ClientSettings, ObjectInfo, RetryPolicy, S3Connection, list_objects

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ('S3Options', 'S3Location', 'S3Store', 'JsonCodec', 'key_part', 'logger')

T = TypeVar('T')

logger = logging.getLogger('pydantic_ai_harness_s3')


class S3Options(TypedDict, total=False):
    """The options both stores take, as `S3StatePersistence` does."""

    client: S3Client
    """An open aiobotocore S3 client to use; by default one shared client per event loop (`shared_client`)."""
    session: aioboto3.Session
    """The session the shared client is made from; by default the AWS default credential chain."""
    client_settings: ClientSettings
    """Endpoint, region, timeouts and pool size of the shared client."""
    retry: RetryPolicy
    """Bounds on retries of conflicts and transient failures, per operation."""


@dataclass
class JsonCodec(Generic[T]):
    """Values as JSON through a pydantic `TypeAdapter`; a missing object is `None`.

    `decode` raises `ValueError` (pydantic's `ValidationError` is one) on bytes that are not such a value, which
    `CasObject` reports as a `CorruptObjectError` and leaves the object untouched.
    """

    adapter: TypeAdapter[T]

    def decode(self, body: bytes) -> T | None:
        return self.adapter.validate_json(body)

    def encode(self, value: T | None) -> bytes:
        return self.adapter.dump_json(value)  # type: ignore[arg-type]  # never called with None: None writes nothing

    def empty(self) -> T | None:
        return None


def key_part(value: str, *, what: str) -> str:
    """`value` (a run id, tool call id, operation id) made safe as one part of an object key.

    Percent-encoding keeps `/` from creating key levels of its own and keeps two different ids from mapping to
    one key. `.` and `..` are encoded whole (`%2E`, `%2E%2E`): as a key level they are what an HTTP layer that
    normalises paths (or SeaweedFS, which refuses them) takes for "this folder" and "the folder above". No other
    id is encoded differently, so keys stored before stay where they are. Raises `ValueError` for an empty id,
    since that would name the level above.
    """
    if not value:
        raise ValueError(f'{what} must be a non-empty string')
    if value in {'.', '..'}:
        return '%2E' * len(value)
    return quote(value, safe='-_.~')


@dataclass
class S3Location(S3Connection):
    """A bucket and key prefix, the client to reach them, and the counters of every request sent there.

    The bucket name and prefix are checked at construction (`ValueError`), before any request.
    """

    stats: CasStats = field(default_factory=CasStats)
    """Requests and bytes this store has sent and received, for benchmarks and cost checks."""

    def object(self, key: str, adapter: TypeAdapter[T], *, run_id: str = '') -> CasObject[T | None]:
        """The object at `{prefix}{key}`, holding one JSON value of `adapter`'s type (`None` while missing)."""
        return CasObject(
            bucket=self.bucket,
            key=self.prefix + key,
            codec=JsonCodec(adapter),
            client=self.s3,
            retry=self.retry,
            stats=self.stats,
            labels={'run_id': run_id} if run_id else {},
            logger=logger,
        )

    async def list(self, key_prefix: str) -> AsyncIterator[ObjectInfo]:
        """The objects whose keys start with `{prefix}{key_prefix}`, in key order."""
        async for page in list_objects(
            self.s3, self.bucket, self.prefix + key_prefix, retry=self.retry, stats=self.stats, logger=logger
        ):
            for info in page:
                yield info


class S3Store:
    """What both stores are built on: a location (bucket, prefix, client, retry bounds) and its request counters.

    Options are those of `S3StatePersistence`: `client`, `session`, `client_settings`, `retry` (see `S3Options`).
    `bucket` must be a valid bucket name and `prefix` '' or end with '/' (else `ValueError`, before any request).
    `stats` counts the requests and bytes the store has used.
    """

    def __init__(self, *, bucket: str, prefix: str = '', **options: Unpack[S3Options]) -> None:
        self.location = S3Location(bucket, prefix, **options)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(bucket={self.location.bucket!r}, prefix={self.location.prefix!r})'

    @property
    def stats(self) -> CasStats:
        """Requests and bytes sent and received so far, by every call of this store."""
        return self.location.stats

    async def aclose(self) -> None:
        """Release what this store holds. The S3 client is the event loop's shared one (or the caller's), so it
        stays open for the other stores using it: it closes with its event loop, or at
        `pydantic_s3_cas.close_shared_client()`."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
