"""Immutable objects of a run that are not JSON values: media bytes, and deleting what a listing found."""

from __future__ import annotations as _annotations

import asyncio
from collections.abc import Iterable, Mapping

from pydantic_ai_harness.media import MediaContext, media_uri_for, parse_media_uri

from pydantic_s3_cas import CasObject, Change, ObjectInfo

from ._location import S3Location, logger

__all__ = ('RunMediaStore', 'delete_listed', 'raw_object')

_EMPTY_CONTEXT = MediaContext()
_DELETES_AT_ONCE = 32


class _Bytes:
    """The object's bytes as they are; a missing object is `None`."""

    def decode(self, body: bytes) -> bytes | None:
        return body

    def encode(self, value: bytes | None) -> bytes:
        assert value is not None  # None writes nothing
        return value

    def empty(self) -> bytes | None:
        return None


def raw_object(location: S3Location, key: str) -> CasObject[bytes | None]:
    """The object at `key` (a full key in the bucket), read and written as bytes."""
    return CasObject(
        bucket=location.bucket,
        key=key,
        codec=_Bytes(),
        client=location.s3,
        retry=location.retry,
        stats=location.stats,
        content_type='application/octet-stream',
        logger=logger,
    )


class RunMediaStore:
    """The default `MediaStore` of `S3StepStore`: one run's media in its folder, `media/{sha256}.bin`.

    Content-addressed and create-only, so a blob is uploaded once however many snapshots refer to it, and
    `delete_run` deletes a run's media with the run. Metadata is not kept (the step store passes none).
    """

    def __init__(self, location: S3Location, folder: str) -> None:
        self._location = location
        self._folder = folder

    def _object(self, uri: str) -> CasObject[bytes | None]:
        return raw_object(self._location, f'{self._folder}media/{parse_media_uri(uri)}.bin')

    async def put(self, data: bytes, *, context: MediaContext = _EMPTY_CONTEXT) -> str:
        uri = media_uri_for(data)

        def create(existing: bytes | None) -> Change[bytes | None, None]:
            return Change(data if existing is None else None, None)

        await self._object(uri).update(create, expect_missing=True)
        return uri

    async def get(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> bytes:
        body = await self._object(uri).load()
        if body is None:
            raise FileNotFoundError(f'media not found: {uri}')
        return body

    async def exists(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> bool:
        return await self._object(uri).load() is not None

    async def public_url(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> str | None:
        return None

    async def get_metadata(self, uri: str, *, context: MediaContext = _EMPTY_CONTEXT) -> Mapping[str, str]:
        await self.get(uri)
        return {}


async def delete_listed(location: S3Location, listed: Iterable[ObjectInfo]) -> int:
    """Delete each listed object if it is still as listed (If-Match its ETag); returns how many were deleted."""
    gate = asyncio.Semaphore(_DELETES_AT_ONCE)

    async def delete(info: ObjectInfo) -> bool:
        async with gate:
            return await raw_object(location, info.key).delete(info.etag)

    return sum(await asyncio.gather(*(delete(info) for info in listed)))


async def delete_immutable(location: S3Location, key: str) -> None:
    """Delete an immutable object this store created (no ETag needed: nothing ever rewrites it)."""
    s3 = await location.s3()
    location.stats.deletes += 1
    await s3.delete_object(Bucket=location.bucket, Key=key)
