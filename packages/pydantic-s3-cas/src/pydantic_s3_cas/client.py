"""One S3 client per event loop, shared by every persistence object on that loop.

Creating an aiobotocore client costs about 100 ms of CPU (it loads and parses the service model), and the
pattern pydantic-graph documents creates a new persistence object for every step. So clients are cached per
(event loop, session, settings) and closed when the loop shuts down, never created per operation.
"""

from __future__ import annotations as _annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = ('ClientSettings', 'shared_client', 'close_shared_client', 'default_session')


@dataclass(frozen=True)
class ClientSettings:
    """How the shared client talks to S3.

    botocore's own retries are switched off (`total_max_attempts=1`) so that the compare-and-swap loop is the
    one place that decides what to retry and for how long: a retried conditional PUT must re-read first.
    """

    endpoint_url: str | None = None
    """An S3-compatible endpoint; `None` follows the AWS configuration (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`)."""
    region_name: str | None = None
    """`None` follows the AWS configuration (`AWS_REGION`, `AWS_DEFAULT_REGION`, the profile)."""
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_pool_connections: int = 32

    def to_config(self) -> AioConfig:
        return AioConfig(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.max_pool_connections,
            retries={'total_max_attempts': 1},
            http_session_cls=_NoResendHTTPSession,
        )


class _NoResendHTTPSession(AIOHTTPSession):
    """aiobotocore's HTTP session, minus aiohttp's silent resend of a PUT whose connection dropped.

    HTTP calls PUT idempotent, so aiohttp sends it once more by itself. A conditional PUT is not: when the first
    copy landed, the second is refused with 412, and a writer that won would believe it lost (and refuse to run
    the node it just claimed). The compare-and-swap loop, which can tell its own write apart, decides instead.
    """

    async def _get_session(self, proxy_url: Any) -> Any:
        session = await super()._get_session(proxy_url)  # type: ignore[misc]  # private in aiobotocore's stubs
        session._retry_connection = False  # aiohttp >= 3.10; a plain attribute on older releases, and unused
        return session


_default_session: aioboto3.Session | None = None


def default_session() -> aioboto3.Session:
    """The process-wide session behind the default AWS credential chain and configuration."""
    global _default_session
    if _default_session is None:
        _default_session = aioboto3.Session()
    return _default_session


_ClientKey = tuple[aioboto3.Session, ClientSettings]
# Each entry keeps a task that resolves to the client, and the async generator that holds the client open.
_clients: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_ClientKey, asyncio.Task[S3Client]]] = WeakKeyDictionary()
_holders: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_ClientKey, AsyncGenerator[S3Client]]] = WeakKeyDictionary()


def _key(session: aioboto3.Session | None, settings: ClientSettings | None) -> _ClientKey:
    return session or default_session(), settings or ClientSettings()


async def shared_client(session: aioboto3.Session | None = None, settings: ClientSettings | None = None) -> S3Client:
    """The S3 client for the running event loop, created on first use.

    Concurrent first uses on one loop wait for the same creation, so a loop never holds two clients for one key.
    """
    loop = asyncio.get_running_loop()
    key = _key(session, settings)
    per_loop = _clients.setdefault(loop, {})
    task = per_loop.get(key)
    if task is None or (task.done() and task.exception() is not None):
        task = per_loop[key] = loop.create_task(_open_client(loop, key))
    return await asyncio.shield(task)


async def close_shared_client(session: aioboto3.Session | None = None, settings: ClientSettings | None = None) -> None:
    """Close the running event loop's shared client for `session` and `settings`, if one is open.

    Every user of that client on this loop shares the closing: the next `shared_client` call opens a new one.
    Without this, the client is closed when its event loop shuts down.
    """
    loop = asyncio.get_running_loop()
    key = _key(session, settings)
    task = _clients.get(loop, {}).pop(key, None)
    if task is None:
        return
    try:
        await asyncio.shield(task)
    except Exception:
        return  # it never opened: nothing to close
    holder = _holders.get(loop, {}).pop(key, None)
    if holder is not None:
        await holder.aclose()  # runs the holder's `async with` exit, which closes the client's connections


async def _open_client(loop: asyncio.AbstractEventLoop, key: _ClientKey) -> S3Client:
    holder = _hold_client(*key)
    client = await holder.__anext__()
    # The loop tracks async generators weakly and closes the live ones at shutdown (asyncio.run, asyncio.Runner),
    # which runs the generator's `async with` exit and so closes the client's HTTP connections cleanly.
    _holders.setdefault(loop, {})[key] = holder
    return client


async def _hold_client(session: aioboto3.Session, settings: ClientSettings) -> AsyncGenerator[S3Client]:
    async with session.client(
        's3', endpoint_url=settings.endpoint_url, region_name=settings.region_name, config=settings.to_config()
    ) as client:
        yield client
