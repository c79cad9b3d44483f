"""Where a store's objects live and how it reaches them: the fields every store of this repository takes.

pydantic-graph-s3's `RunStore` and pydantic-ai-harness-s3's stores are all a bucket, a key prefix (a folder), a
client (given, or the event loop's shared one made from `session` and `client_settings`) and retry bounds.

The shared client is shared by every store of its event loop, so no store closes it: it closes when the loop
shuts down (`asyncio.run`), or at `close_shared_client()`. A client given is the caller's to close.
"""

from __future__ import annotations as _annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aioboto3

from .cas import RetryPolicy
from .client import ClientSettings, shared_client
from .names import validate_bucket_name, validate_prefix

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ('S3Connection',)


@dataclass
class S3Connection:
    """A bucket and key prefix, and how to reach them: both checked at construction, before any request.

    `bucket` must be a name S3 accepts (`validate_bucket_name`) and `prefix` must be `''` or end with `/`
    (`validate_prefix`): either mistake is a `ValueError` here, not an error at the first request.
    """

    bucket: str
    prefix: str = ''
    client: S3Client | None = field(default=None, repr=False)
    """An open aiobotocore S3 client to use; by default one shared client per event loop (`shared_client`)."""
    session: aioboto3.Session | None = field(default=None, repr=False)
    """The session the shared client is made from; by default the AWS default credential chain."""
    client_settings: ClientSettings = field(default_factory=ClientSettings)
    """Endpoint, region, timeouts and pool size of the shared client."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Bounds on retries of conflicts and transient failures, per operation."""

    def __post_init__(self) -> None:
        validate_bucket_name(self.bucket)
        validate_prefix(self.prefix)  # a folder: never list, read or delete another prefix's objects

    async def s3(self) -> S3Client:
        """The client for this call: the one given, else the shared client of the running event loop."""
        if self.client is not None:
            return self.client
        return await shared_client(self.session, self.client_settings)
