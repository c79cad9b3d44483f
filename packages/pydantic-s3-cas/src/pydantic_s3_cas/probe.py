"""Endpoint self-check: does this S3 store honour `If-Match` and `If-None-Match` on PutObject?

Some S3-compatible stores accept the headers and ignore them (the npm `s3rver` does). On such a store every
compare-and-swap succeeds, so two workers both win, and every guarantee of this library is silently false. The
check writes a probe object under the run prefix with the very mechanism every write uses (`CasObject.update`),
arranges for one create-only write and one stale-ETag write that a conforming store must refuse, and deletes
the probe.
"""

from __future__ import annotations as _annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aioboto3

from .cas import CasObject, Change, RetryPolicy
from .client import ClientSettings, shared_client
from .errors import ConditionalWritesUnsupportedError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ('verify_conditional_writes', 'ensure_conditional_writes', 'PROBE_KEY_PREFIX')

PROBE_KEY_PREFIX = '.conditional-write-probe-'
"""Probe objects are `{prefix}{PROBE_KEY_PREFIX}{random hex}`: the only keys the check deletes, so a policy can
grant s3:DeleteObject on `{prefix}.conditional-write-probe-*` alone (the Terraform module does)."""

# (endpoint URL, bucket) pairs verified in this process: a warm worker checks once, not per run.
_verified: set[tuple[str, str]] = set()


async def verify_conditional_writes(
    bucket: str,
    prefix: str = '',
    *,
    client: S3Client | None = None,
    session: aioboto3.Session | None = None,
    client_settings: ClientSettings | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Prove on a probe object under `prefix` that the endpoint honours both conditions, then delete the probe.

    Returns the endpoint URL checked. Raises `ConditionalWritesUnsupportedError`, naming the endpoint and the
    ignored header, when it does not.
    Uses `client`, or the shared client of `session` and `client_settings`. Needs s3:GetObject and s3:PutObject on
    the prefix, and s3:DeleteObject on `{prefix}.conditional-write-probe-*`.
    """
    s3 = client if client is not None else await shared_client(session, client_settings)
    await _probe(s3, bucket, prefix, retry or RetryPolicy())
    return s3.meta.endpoint_url


async def ensure_conditional_writes(client: S3Client, bucket: str, prefix: str, *, retry: RetryPolicy) -> None:
    """`verify_conditional_writes` once per endpoint and bucket in this process; only successes are remembered."""
    verified = (client.meta.endpoint_url, bucket)
    if verified not in _verified:
        await _probe(client, bucket, prefix, retry)
        _verified.add(verified)


class _Bytes:
    """The probe's codec: the body as it is."""

    def decode(self, body: bytes) -> bytes:
        return body

    def encode(self, value: bytes) -> bytes:
        return value

    def empty(self) -> bytes:
        return b''


def _create(body: bytes) -> Callable[[bytes], Change[bytes, bool]]:
    """A create-only change: write `body` if there is nothing yet; the result says whether it wrote."""
    return lambda current: Change(body, True) if current == b'' else Change(None, False)


def _overwrite(body: bytes) -> Callable[[bytes], Change[bytes, bytes]]:
    """Write `body` whatever is there; the result is what the change was applied to."""
    return lambda current: Change(body, current)


async def _probe(client: S3Client, bucket: str, prefix: str, retry: RetryPolicy) -> None:
    key = f'{prefix}{PROBE_KEY_PREFIX}{uuid.uuid4().hex}'
    endpoint = client.meta.endpoint_url

    def probe_object() -> CasObject[bytes]:
        async def source() -> S3Client:
            return client

        source_fn: Callable[[], Awaitable[S3Client]] = source
        return CasObject(bucket=bucket, key=key, codec=_Bytes(), client=source_fn, retry=retry)

    first = probe_object()
    try:
        await first.update(_create(b'first'), expect_missing=True)
        # A second create-only write of the same new key guesses it is missing, so it is sent with
        # IfNoneMatch='*': a conforming store refuses it (412), and the retry reads 'first' and writes nothing.
        if await probe_object().update(_create(b'second'), expect_missing=True):
            raise ConditionalWritesUnsupportedError(bucket, key, endpoint, 'If-None-Match')
        # `first` caches the ETag of its write; once another writer has changed the object, its next write is
        # sent with that stale IfMatch and must be refused, so its change runs again on the other writer's body.
        await probe_object().update(_overwrite(b'third'))
        if await first.update(_overwrite(b'fourth')) != b'third':
            raise ConditionalWritesUnsupportedError(bucket, key, endpoint, 'If-Match')
    finally:
        # Nobody else writes the probe, so deleting the version it has now cannot be refused.
        _, etag = await first.load_versioned()
        if etag is not None:
            await first.delete(etag)
