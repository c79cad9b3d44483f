"""A reverse proxy in front of an S3 endpoint that fails requests on demand, for testing error handling.

It forwards requests unchanged (method, raw path and query, headers including `Host`, body), so SigV4
signatures made for the proxy's address still validate upstream. A test programs faults: S3 error responses
made up without forwarding, requests held until the client's read timeout fires, and the ambiguous outcomes
where the request reaches S3 (a write lands) but the client gets an error, a timeout or a dropped connection.

The proxy runs its own event loop in a background thread, so sync and async tests use it the same way.

Tests keep the client's read timeout short, so that a held request times out quickly; a loaded machine must not
make a healthy request time out as well. So while S3 works on a request that will be answered, the proxy sends
the client `102 Processing` interim responses, which aiohttp skips and which stop its read timer (aiohttp 3.14
drops the timer at any message without a body): a read timeout then only ever comes from a request the proxy
holds back on purpose.
"""

from __future__ import annotations as _annotations

import asyncio
import random
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

__all__ = ('Exchange', 'Fault', 'FaultProxy', 'RANDOM_FAULTS', 'fault_proxy')

ERROR_CODES = {
    409: 'ConditionalRequestConflict',
    412: 'PreconditionFailed',
    500: 'InternalError',
    503: 'SlowDown',
}
_MESSAGES = {
    'ConditionalRequestConflict': 'A conflicting operation occurred. If using PutObject you can retry the request.',
    'PreconditionFailed': 'At least one of the pre-conditions you specified did not hold',
    'InternalError': 'We encountered an internal error. Please try again.',
    'SlowDown': 'Please reduce your request rate.',
}
# Connection-level headers, which describe one hop and are not passed on (RFC 9110, 7.6.1).
_HOP_BY_HOP = frozenset(
    ('connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade')
)
# Nor is `Expect: 100-continue`: the proxy already read the body. SigV4 never signs any of these.
_NOT_FORWARDED = _HOP_BY_HOP | {'expect'}
# How often a request still being answered upstream shows the client it is alive: well under any read timeout a
# test sets (0.3 s is the shortest).
_KEEPALIVE_INTERVAL = 0.05


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or after) forwarding a request, and which requests it applies to.

    Exactly one outcome: `status` (an S3 XML error with `code`, defaulting from `ERROR_CODES`), `timeout`
    (never answer; the connection is held until the proxy stops) or `drop` (close the connection unanswered).
    With `forward`, the request is first sent upstream and its response discarded, so a write lands although
    the client sees a failure. The fault applies to the next `times` requests (None: all, until `clear()`)
    matching `method` and `path`, a regular expression searched in the raw path and query (e.g.
    `'^/bucket/runs/'`, `'uploads'`), after letting the first `after` of them through untouched: e.g. a burst of
    503s on the third PUT of one object's key, `Fault(status=503, method='PUT', path=key, after=2, times=12)`.
    """

    status: int | None = None
    code: str | None = None
    message: str | None = None
    timeout: bool = False
    drop: bool = False
    forward: bool = False
    method: str | None = None
    path: str | None = None
    times: int | None = 1
    after: int = 0

    def __post_init__(self) -> None:
        if (self.status is not None) + self.timeout + self.drop != 1:
            raise ValueError('a Fault needs exactly one of status=, timeout=True, drop=True')
        if self.status is not None and self.code is None and self.status not in ERROR_CODES:
            raise ValueError(f'no default S3 error code for status {self.status}: pass code=')

    @property
    def kind(self) -> str:
        """A short label for logs and counters: `'503 SlowDown'`, `'timeout'`, `'drop'`, with a `forward+` prefix."""
        outcome = 'timeout' if self.timeout else 'drop' if self.drop else f'{self.status} {self.error_code}'
        return f'forward+{outcome}' if self.forward else outcome

    @property
    def error_code(self) -> str:
        return self.code or ERROR_CODES.get(self.status or 0, 'InternalError')

    def matches(self, method: str, path_qs: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.path is None or re.search(self.path, path_qs) is not None
        )


# What `random_faults` picks from by default: the transient failures a client must retry.
RANDOM_FAULTS = (Fault(status=500), Fault(status=503), Fault(timeout=True))


@dataclass(frozen=True)
class Exchange:
    """One request the proxy handled: `status` is what the client got (None for timeout/drop), `fault` the
    `Fault.kind` injected (None when forwarded untouched), `upstream_status` what S3 answered if it was asked."""

    method: str
    path: str
    status: int | None
    fault: str | None
    upstream_status: int | None

    @property
    def injected(self) -> bool:
        return self.fault is not None


@dataclass
class _Queued:
    """A queued fault: uses left (None: unlimited), and matching requests still to let through first."""

    fault: Fault
    left: int | None
    to_pass: int


@dataclass
class _Random:
    rate: float
    rng: random.Random
    faults: Sequence[Fault]


@dataclass
class FaultProxy:
    """The running proxy: `url` to point clients at, `inject()`/`random_faults()` to program it, `log` to check."""

    url: str
    upstream: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _faults: list[_Queued] = field(default_factory=list, repr=False)
    _random: _Random | None = field(default=None, repr=False)
    _log: list[Exchange] = field(default_factory=list, repr=False)
    _stripped: frozenset[str] = field(default=frozenset(), repr=False)

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each request takes the first matching one that has uses left."""
        with self._lock:
            self._faults.extend(_Queued(fault, fault.times, fault.after) for fault in faults)

    def random_faults(self, rate: float, *, seed: int = 0, faults: Sequence[Fault] = RANDOM_FAULTS) -> None:
        """Fail a `rate` fraction of the requests no queued fault applies to, picking from `faults` (whose
        `times` is ignored) with a seeded RNG: the same request sequence gets the same faults. Rate 0 turns it off.
        """
        with self._lock:
            self._random = _Random(rate, random.Random(seed), tuple(faults)) if rate > 0 else None

    def strip_headers(self, *names: str) -> None:
        """Drop these request headers before forwarding, e.g. `'If-Match'`: a store that ignores them. Only in
        front of an endpoint that does not check signatures (moto), as the headers are signed. None: stop."""
        with self._lock:
            self._stripped = frozenset(name.lower() for name in names)

    def clear(self) -> None:
        """Forget queued faults and random mode; the log is kept."""
        with self._lock:
            self._faults.clear()
            self._random = None

    @property
    def log(self) -> list[Exchange]:
        """The requests handled so far, in the order their outcome was decided."""
        with self._lock:
            return list(self._log)

    @property
    def counters(self) -> Counter[str]:
        """`requests`, `forwarded` (reached upstream), `injected`, and one count per `Fault.kind` injected."""
        counts: Counter[str] = Counter()
        for exchange in self.log:
            counts['requests'] += 1
            counts['forwarded'] += exchange.upstream_status is not None
            if exchange.fault is not None:
                counts['injected'] += 1
                counts[exchange.fault] += 1
        return counts

    def _take_fault(self, method: str, path_qs: str) -> Fault | None:
        with self._lock:
            for i, queued in enumerate(self._faults):
                if queued.fault.matches(method, path_qs):
                    if queued.to_pass > 0:
                        queued.to_pass -= 1
                        return None
                    if queued.left is not None:
                        queued.left -= 1
                        if queued.left <= 0:
                            del self._faults[i]
                    return queued.fault
            chance = self._random
            if chance is not None and chance.rng.random() < chance.rate:
                return chance.rng.choice(chance.faults)
            return None

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self._log.append(exchange)


class _Server:
    """The aiohttp side: lives on the proxy's event loop thread."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.stopping = asyncio.Event()
        self.session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        # aiohttp resends an idempotent request (PUT, DELETE too) once when the connection drops; a proxy that
        # should forward each request exactly once must not (there is no public switch for it, aiohttp 3.14).
        self.session._retry_connection = False

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get('Expect', '').lower() == '100-continue':
            # botocore waits for this before sending a PutObject body; aiohttp's low-level server leaves it to us.
            await request.writer.write(b'HTTP/1.1 100 Continue\r\n\r\n')
        body = await request.read()
        fault = self.proxy._take_fault(request.method, request.raw_path)
        upstream_status = None
        if fault is None or fault.forward:
            try:
                # Only before an answer: aiohttp stops its read timer at a 1xx, so a held request would never time
                # out, and a drop must come with nothing received.
                keep_alive = fault is None or fault.status is not None
                upstream = await self._forward(request, body, keep_alive=keep_alive)
            except aiohttp.ClientError as e:
                self._record(request, 502, fault, None)
                return web.Response(status=502, text=f'fault proxy: upstream failed: {e!r}')
            async with upstream:
                if fault is None:
                    # Logged before relaying: once the client has the response, a test may read the log.
                    self._record(request, upstream.status, None, upstream.status)
                    return await self._relay(request, upstream)
                await upstream.read()
                upstream_status = upstream.status
        if fault.status is not None:
            self._record(request, fault.status, fault, upstream_status)
            return _error_response(request, fault)
        self._record(request, None, fault, upstream_status)
        if fault.timeout:
            await self.stopping.wait()
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=499)  # never sent: the connection is gone

    async def _forward(self, request: web.BaseRequest, body: bytes, *, keep_alive: bool) -> aiohttp.ClientResponse:
        """Send the request upstream; with `keep_alive`, send the client `102 Processing` until S3 answers."""
        forwarding = asyncio.ensure_future(self._send_upstream(request, body))
        while keep_alive and not forwarding.done():
            await asyncio.wait((forwarding,), timeout=_KEEPALIVE_INTERVAL)
            if not forwarding.done() and request.transport is not None and not request.transport.is_closing():
                await request.writer.write(b'HTTP/1.1 102 Processing\r\n\r\n')
        return await forwarding

    async def _send_upstream(self, request: web.BaseRequest, body: bytes) -> aiohttp.ClientResponse:
        dropped = _NOT_FORWARDED | self.proxy._stripped
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in dropped)
        return await self.session.request(
            request.method,
            URL(self.proxy.upstream + request.raw_path, encoded=True),
            headers=headers,
            data=body or None,
            allow_redirects=False,
            # Send exactly the client's headers: none of aiohttp's defaults.
            skip_auto_headers=('User-Agent', 'Accept', 'Accept-Encoding', 'Content-Type'),
        )

    async def _relay(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response

    def _record(self, request: web.BaseRequest, status: int | None, fault: Fault | None, upstream: int | None) -> None:
        kind = None if fault is None else fault.kind
        self.proxy._record(Exchange(request.method, request.raw_path, status, kind, upstream))


def _error_response(request: web.BaseRequest, fault: Fault) -> web.Response:
    """An S3-style XML error, as botocore parses it into `ClientError.response['Error']`."""
    code = fault.error_code
    message = fault.message or _MESSAGES.get(code, code)
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>'
        f'<Resource>{escape(request.path)}</Resource><RequestId>fault-proxy</RequestId></Error>'
    )
    assert fault.status is not None
    return web.Response(status=fault.status, body=xml.encode(), content_type='application/xml')


@contextmanager
def fault_proxy(upstream_url: str) -> Iterator[FaultProxy]:
    """Serve a `FaultProxy` for `upstream_url` on a free 127.0.0.1 port; stop it (and release held requests) on exit."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    proxy = FaultProxy(url=f'http://127.0.0.1:{sock.getsockname()[1]}', upstream=upstream_url.rstrip('/'))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name='fault-proxy', daemon=True)
    thread.start()

    async def start() -> tuple[_Server, web.BaseRunner]:
        server = _Server(proxy)
        runner = web.ServerRunner(web.Server(server.handle, access_log=None), shutdown_timeout=5)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return server, runner

    async def stop(server: _Server, runner: web.BaseRunner) -> None:
        server.stopping.set()
        await runner.cleanup()
        await server.session.close()

    try:
        server, runner = asyncio.run_coroutine_threadsafe(start(), loop).result()
        try:
            yield proxy
        finally:
            asyncio.run_coroutine_threadsafe(stop(server, runner), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        sock.close()
