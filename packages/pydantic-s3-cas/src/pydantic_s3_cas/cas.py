"""Compare-and-swap on one S3 object: the single write mechanism of this library.

`CasObject.update(change)` reads the object (body and ETag), applies `change`, a pure function of the decoded
value, and writes the result back with `PutObject(IfMatch=etag)`, or `IfNoneMatch='*'` when the object does not
exist yet. If another writer got there first S3 answers 412 (or 409, or 404 when the object vanished), and the
whole cycle runs again on what that writer left, so every decision `change` makes is re-made on fresh data.
There are no locks, so a crashed writer can never leave anything behind that blocks the others.

`RequestScope` is the one place that retries, classifies errors, counts and traces S3 requests: `CasObject`
uses it for reads, updates and conditional deletes, `list_objects` for listing pages.
"""

from __future__ import annotations as _annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_after_delay

from .errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ClockSkewError,
    CorruptObjectError,
    CredentialsError,
    DeadlineExceededError,
    EndpointUnreachableError,
    ObjectChangedError,
    ObjectTooLargeError,
    RetriesExhaustedError,
    S3PersistenceError,
    shortened,
)
from .telemetry import logger as default_logger
from .telemetry import span

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = (
    'Codec',
    'Change',
    'RetryPolicy',
    'CasStats',
    'CasObject',
    'ClientSource',
    'ObjectInfo',
    'list_objects',
    'storage_deadline',
)

T = TypeVar('T')
R = TypeVar('R')

ClientSource = Callable[[], Awaitable['S3Client']]
"""Where a `CasObject` gets its client: called once per request, so it must be cheap (see `shared_client`)."""


class Codec(Protocol[T]):
    """Turns stored bytes into a value and back. `decode` raises `ValueError` on bytes it does not recognise."""

    def decode(self, body: bytes) -> T: ...

    def encode(self, value: T) -> bytes: ...

    def empty(self) -> T:
        """The value of an object that does not exist yet."""
        ...


@dataclass(frozen=True)
class Change(Generic[T, R]):
    """What a change function decided: the value to write (`None`: write nothing) and what to return.

    `creates` are immutable objects (key, bytes) that the value refers to: each is created with
    `IfNoneMatch='*'` before the value is written, so the value never names an object that does not exist. One
    that exists already must hold the same bytes (an earlier attempt's, or a racing writer's, making the same
    decision), else the update fails with `CorruptObjectError` naming it.
    """

    value: T | None
    result: R
    creates: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on one `update` or `load`: conflicts and transient failures are retried within both limits.

    Waits are exponential with full jitter (`initial_backoff * 2**n`, capped at `max_backoff`), so writers that
    collided spread out instead of colliding again.
    """

    max_attempts: int = 12
    max_elapsed: float = 60.0
    initial_backoff: float = 0.02
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f'max_attempts must be at least 1, got {self.max_attempts}')
        if self.max_elapsed <= 0 or self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError('need max_elapsed > 0 and 0 <= initial_backoff <= max_backoff')


@dataclass
class CasStats:
    """Counters of one `CasObject` (or one `RunStore`): what its callers paid in requests and bytes.

    Every request sent counts, including failed ones. `conflicts` counts requests refused because another
    writer got there first; `retries` counts attempts made again after a failure (conflict or transient), so a
    call that gives up after `max_attempts` attempts adds `max_attempts - 1`.
    """

    gets: int = 0
    puts: int = 0
    deletes: int = 0
    lists: int = 0
    conflicts: int = 0
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def requests(self) -> int:
        return self.gets + self.puts + self.deletes + self.lists

    def as_dict(self) -> dict[str, int]:
        """Every counter and the request total, for printing or JSON."""
        return {**asdict(self), 'requests': self.requests}


@dataclass(frozen=True)
class _Version(Generic[T]):
    """A version of the object: its bytes and ETag, and the decoded value when no caller holds that value."""

    body: bytes
    etag: str
    value: T | None = None


class _Retryable(Exception):
    """A failed attempt that another attempt may fix."""

    def __init__(self, reason: str, *, conflict: bool = False, unreachable: bool = False, from_cache: bool = False):
        super().__init__(reason)
        self.conflict = conflict
        self.unreachable = unreachable
        # A conflict on a cached ETag only means our copy was stale: re-read at once, don't back off.
        self.from_cache = from_cache


CLOCK_TOLERANCE = timedelta(seconds=2)
"""How far this machine's clock may be from the S3 endpoint's before `CasObject.server_now` stops using it."""

_CONFLICT_CODES = frozenset({'PreconditionFailed', '412', 'ConditionalRequestConflict', '409'})
_TRANSIENT_CODES = frozenset(
    {
        'InternalError',
        'ServiceUnavailable',
        'SlowDown',
        'RequestTimeout',
        'Throttling',
        'ThrottlingException',
        '500',
        '502',
        '503',
        '504',
    }
)
_CREDENTIAL_CODES = frozenset(
    {
        'ExpiredToken',
        'ExpiredTokenException',
        'InvalidAccessKeyId',
        'SignatureDoesNotMatch',
        'InvalidToken',
        'TokenRefreshRequired',
    }
)

_deadline: ContextVar[float | None] = ContextVar('pydantic_s3_cas_deadline', default=None)


@contextmanager
def storage_deadline(deadline: float | None) -> Iterator[None]:
    """Every storage call made inside (in this task and the tasks it starts) ends by `deadline`.

    `deadline` is a `time.monotonic()` time (`None`: no deadline; an outer, earlier deadline still applies).
    Retries stop, and a request in flight is abandoned, when it comes: the call raises `DeadlineExceededError`.
    A serverless worker sets it so that no storage call outlives its invocation.
    """
    outer = _deadline.get()
    effective = deadline if outer is None else outer if deadline is None else min(outer, deadline)
    reset = _deadline.set(effective)
    try:
        yield
    finally:
        _deadline.reset(reset)


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing shows it."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@dataclass
class _Request:
    """One S3 request as its span and log record show it; the request code fills in the ETag and outcome."""

    operation: str
    attempt: int
    etag: str | None = None
    outcome: str = 'ok'


@dataclass
class RequestScope:
    """What a series of S3 requests is about, and the one mechanism that retries, classifies, counts and traces them.

    `key` is the object (or, for a listing, the prefix) named in errors, spans and log records; `labels` are
    added to every span and log record (the persistence adds the run id).
    """

    bucket: str
    key: str
    retry: RetryPolicy
    stats: CasStats
    labels: Mapping[str, str] = field(default_factory=dict)
    endpoint_url: str = 'the S3 endpoint'
    logger: logging.Logger = default_logger
    """Where its records go: the library that owns the object names it (`pydantic_graph_s3` for runs)."""

    @contextmanager
    def request(self, operation: str, attempt: int, etag: str | None = None) -> Iterator[_Request]:
        """Trace one request: a span with bucket, key, ETag, attempt and outcome, and a DEBUG record."""
        record = _Request(operation, attempt, etag)
        with span(
            'S3 {operation} {key}',
            operation=operation,
            bucket=self.bucket,
            key=self.key,
            attempt=attempt,
            **self.labels,
        ) as request_span:
            try:
                yield record
            except _Retryable as e:
                record.outcome = 'conflict' if e.conflict else 'transient'
                raise
            except BaseException as e:
                if record.outcome == 'ok':
                    record.outcome = f'error: {type(e).__name__}'
                raise
            finally:
                request_span.set_attribute('outcome', record.outcome)
                # The ETag may be a caller's (a delete's `If-Match`): quoted cut short, like any caller input.
                request_span.set_attribute('etag', shortened(record.etag or ''))
                self.logger.debug(
                    '%s s3://%s/%s attempt %d: %s (ETag %s)',
                    operation,
                    self.bucket,
                    self.key,
                    attempt,
                    record.outcome,
                    None if record.etag is None else shortened(record.etag),
                    extra=self._log_extra(),
                )

    def classify(self, error: ClientError | BotoCoreError, operation: str, *, from_cache: bool = False) -> Exception:
        """Turn a botocore error into `_Retryable` (try again) or a typed, final `S3PersistenceError`."""
        code = _error_code(error)
        if code in _CONFLICT_CODES:
            self.stats.conflicts += 1
            return _Retryable(f'{operation}: {code} (another writer won)', conflict=True, from_cache=from_cache)
        if code in _TRANSIENT_CODES:
            return _Retryable(f'{operation}: {code}')
        if code == 'RequestTimeTooSkewed':
            return ClockSkewError(self.bucket, self.key, operation)
        if isinstance(error, BotoConnectionError):  # no connection at all: refused, DNS, connect timeout
            return _Retryable(f'{operation}: {type(error).__name__}: {error}', unreachable=True)
        if isinstance(error, HTTPClientError):  # connected, then a read timeout or a dropped connection
            return _Retryable(f'{operation}: {type(error).__name__}: {error}')
        if code == 'NoSuchBucket':
            return BucketNotFoundError(self.bucket, self.key)
        if code in {'AccessDenied', '403', 'AllAccessDisabled'}:
            return AccessDeniedError(self.bucket, self.key, operation)
        if code in _CREDENTIAL_CODES or isinstance(error, NoCredentialsError | PartialCredentialsError):
            return CredentialsError(self.bucket, self.key, code or type(error).__name__)
        return S3PersistenceError(self.bucket, self.key, f'{operation} failed: {error}')

    async def with_retries(self, attempt: Callable[[int], Awaitable[R]]) -> R:
        """Call `attempt(number)` until it succeeds, raises something final, or the retry policy runs out."""
        policy = self.retry
        number = 0
        deadline = _deadline.get()
        last_failure: BaseException | None = None

        async def numbered() -> R:
            nonlocal number, last_failure
            number += 1
            if deadline is None:
                return await attempt(number)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._deadline_exceeded(number - 1, last_failure)
            try:
                async with asyncio.timeout(remaining) as limit:
                    return await attempt(number)
            except _Retryable as e:
                last_failure = e
                raise
            except TimeoutError:
                if not limit.expired():
                    raise
            self._deadline_exceeded(number, last_failure)

        def wait(state: RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome else None
            if isinstance(failure, _Retryable) and failure.from_cache:
                return 0.0
            ceiling = min(policy.max_backoff, policy.initial_backoff * 2 ** (state.attempt_number - 1))
            pause = random.uniform(0, ceiling)
            # Never sleep past the deadline: the next attempt then sees it has come, and gives up at once.
            return pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic()))

        def before_sleep(state: RetryCallState) -> None:
            # Counted here, not in `wait`: tenacity computes the wait before deciding to stop, so the last,
            # given-up attempt would be counted as a retry that never happened.
            self.stats.retries += 1
            failure = state.outcome.exception() if state.outcome else None
            self.logger.info(
                'retrying s3://%s/%s after attempt %d: %s',
                self.bucket,
                self.key,
                state.attempt_number,
                failure,
                extra=self._log_extra(),
            )

        def give_up(state: RetryCallState) -> R:
            failure = state.outcome.exception() if state.outcome else None
            elapsed = state.seconds_since_start or 0.0
            self.logger.warning(
                'giving up on s3://%s/%s after %d attempt(s): %s',
                self.bucket,
                self.key,
                state.attempt_number,
                failure,
                extra=self._log_extra(),
            )
            if isinstance(failure, _Retryable) and failure.unreachable:
                raise EndpointUnreachableError(
                    self.bucket, self.key, self.endpoint_url, state.attempt_number, str(failure)
                )
            raise RetriesExhaustedError(self.bucket, self.key, state.attempt_number, elapsed, str(failure))

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_elapsed),
            wait=wait,
            before_sleep=before_sleep,
            retry=retry_if_exception_type(_Retryable),
            retry_error_callback=give_up,
        )
        return await retrying(numbered)

    def _deadline_exceeded(self, attempts: int, last_failure: BaseException | None) -> NoReturn:
        self.logger.warning(
            'deadline reached on s3://%s/%s after %d attempt(s)',
            self.bucket,
            self.key,
            attempts,
            extra=self._log_extra(),
        )
        raise DeadlineExceededError(
            self.bucket, self.key, attempts, None if last_failure is None else str(last_failure)
        )

    def _log_extra(self) -> dict[str, Any]:
        return {'run_id': self.labels.get('run_id', ''), 'bucket': self.bucket, 'key': self.key}


async def list_objects(
    client: ClientSource,
    bucket: str,
    prefix: str,
    *,
    retry: RetryPolicy,
    stats: CasStats,
    page_size: int = 1000,
    logger: logging.Logger = default_logger,
) -> AsyncIterator[list[ObjectInfo]]:
    """The objects under `prefix`, one listing page at a time (each page retried on its own)."""
    scope = RequestScope(bucket, prefix, retry, stats, logger=logger)
    token: str | None = None
    while True:

        async def page(attempt: int, token: str | None = token) -> Any:
            s3 = await client()
            scope.endpoint_url = s3.meta.endpoint_url
            stats.lists += 1
            with scope.request('ListObjectsV2', attempt):
                try:
                    if token is None:
                        return await s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=page_size)
                    return await s3.list_objects_v2(
                        Bucket=bucket, Prefix=prefix, MaxKeys=page_size, ContinuationToken=token
                    )
                except (ClientError, BotoCoreError) as e:
                    raise scope.classify(e, 'ListObjectsV2') from e

        response = await scope.with_retries(page)
        yield [
            ObjectInfo(item['Key'], item['Size'], item['ETag'], item['LastModified'])
            for item in response.get('Contents', [])
        ]
        token = response.get('NextContinuationToken')
        if not response.get('IsTruncated') or token is None:
            return


@dataclass
class CasObject(Generic[T]):
    """One S3 object updated only by compare-and-swap, with the last version seen kept as an ETag cache.

    The cache lets a writer that is the only one touching the object skip the GET: it puts straight away with
    the ETag of its own previous write, and only a 412 (someone else wrote) sends it back to a fresh read.
    """

    bucket: str
    key: str
    codec: Codec[T]
    client: ClientSource
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    content_type: str = 'application/json'
    max_object_bytes: int | None = 64 * 1024 * 1024
    stats: CasStats = field(default_factory=CasStats)
    labels: Mapping[str, str] = field(default_factory=dict)
    """Added to every span and log record of this object's requests (the persistence adds the run id)."""
    logger: logging.Logger = default_logger
    """Where this object's log records go (see `RequestScope.logger`)."""
    confirm_cached_decisions: bool = False
    """Confirm with S3 (a conditional GET) a change's decision to write nothing, or to raise, taken from the
    cached value, before `update` returns it (see `update`). Off for owners that read their own cache on purpose
    (a peek that costs no request); on for a run's head, whose "nothing to do" must be what S3 holds."""
    _version: _Version[T] | None = field(default=None, init=False, repr=False)
    _scope: RequestScope = field(init=False, repr=False)
    _server_clock: tuple[datetime, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._scope = RequestScope(self.bucket, self.key, self.retry, self.stats, self.labels, logger=self.logger)

    async def load(self) -> T:
        """A fresh read of the current value (the empty value when the object does not exist)."""
        value, _ = await self.load_versioned()
        return value

    async def load_versioned(self) -> tuple[T, str | None]:
        """A fresh read of the current value and its ETag (`None` when the object does not exist)."""

        async def read(attempt: int) -> tuple[T, str | None]:
            # Decoded afresh and not cached: the caller owns (and may change) what it gets.
            version = await self._get(attempt)
            return self._decode(version), None if version is None else version.etag

        return await self._scope.with_retries(read)

    async def read_object(self, key: str) -> bytes | None:
        """A fresh read of another object that belongs with this one (e.g. an immutable part of its history),
        with this object's retries, limits and counters. `None` when it does not exist."""
        return await self._scope.with_retries(partial(self._get_other, key=key))

    async def update(self, change: Callable[[T], Change[T, R]], *, expect_missing: bool = False) -> R:
        """Apply `change` to the current value and write the result back atomically; return what it decided.

        `change` may run several times, once per attempt, always on the value as it then is in S3; exceptions
        it raises abort the update with nothing written. It must not modify the value it is given, nor return
        parts of the new value as its result: the new value is cached and handed to the next change as is,
        which spares a writer with a warm cache from decoding the whole object on every update.

        When a PUT's outcome is unknown (a timeout, a dropped connection, a 5xx), the next attempt recognises
        the body it tried to write, so a write that did land is not applied twice.

        With `confirm_cached_decisions`, a change applied to the cached value (or to a guess that the object is
        missing) that decides to write nothing, or raises, is confirmed with S3 first: a conditional GET
        (`IfNoneMatch=etag`, answered 304 with no body while the object is unchanged), and `change` is applied
        again to what S3 holds if it changed. A write needs no such check (its condition is one), so a writer
        whose changes write pays no extra request.

        `expect_missing=True` is for creating objects: the first attempt skips the GET and applies `change` to the
        empty value, writing with `IfNoneMatch='*'`; only if the object exists after all (412) does the next
        attempt read it. That saves a request, and a GET of a missing key, which S3 answers with 403 rather than
        404 to a caller whose `s3:ListBucket` is limited by an `s3:prefix` condition.
        """
        # Every body sent whose outcome is unknown (a timeout, a dropped connection, a 5xx): any of them may land
        # later, even after the next attempt's read, so each later read is compared with all of them.
        unconfirmed: list[tuple[bytes, R]] = []
        guess_missing = expect_missing

        async def attempt(number: int) -> R:
            nonlocal guess_missing
            cached = self._version
            guessed, guess_missing = cached is None and guess_missing, False
            denied: AccessDeniedError | None = None
            try:
                version = cached if cached is not None or guessed else await self._get(number)
            except AccessDeniedError as e:
                # S3 answers 403, not 404, for a missing key when the caller may not list the bucket (a ListBucket
                # grant limited by an s3:prefix condition does that). Taking the object as missing can only lead to
                # a create with IfNoneMatch='*', which fails harmlessly if the object does exist after all.
                version, denied = None, e
            # Decided from a copy S3 did not just give us (the cache, or a guess that the object is missing):
            # a write is checked by its condition, but a decision to write nothing, or to refuse, is confirmed first.
            unverified = cached is not None or guessed
            confirm = unverified and self.confirm_cached_decisions
            while True:
                if version is not None:
                    for body, result in unconfirmed:
                        if version.body == body:
                            return result
                current = version.value if version is not None and version.value is not None else self._decode(version)
                try:
                    decided = change(current)
                except Exception as e:
                    if confirm and (fresh := await self._revalidated(number, version)) is not version:
                        version, unverified, confirm = fresh, False, False
                        continue  # decided on a stale copy: decide again on what S3 holds
                    if denied is not None:
                        raise denied from e  # e.g. "no such snapshot" in a run we may not read: the denial answers
                    raise
                if (
                    decided.value is None
                    and confirm
                    and (fresh := await self._revalidated(number, version)) is not version
                ):
                    version, unverified, confirm = fresh, False, False
                    continue
                break
            if decided.value is None:
                if denied is not None:
                    raise denied
                if version is not None:
                    self._version = replace(version, value=current)
                return decided.result
            body = self.codec.encode(decided.value)
            self._check_size(self.key, body)
            for key, created in decided.creates:
                self._check_size(key, created)
            for key, created in decided.creates:
                await self._create(number, key, created)
            try:
                # A conflict on a guess or a cached ETag only means we did not know the current version.
                etag = version.etag if version is not None else None
                await self._put(number, body, decided.value, etag, from_cache=unverified)
            except _Retryable as e:
                if denied is not None and e.conflict:
                    raise denied from e  # it exists, and we may not read it
                if not e.conflict:
                    unconfirmed.append((body, decided.result))
                raise
            return decided.result

        return await self._scope.with_retries(attempt)

    async def delete(self, etag: str) -> bool:
        """Delete the object only if it still has `etag` (`DeleteObject(IfMatch=etag)`).

        Returns `False` when the object was already gone. Raises `ObjectChangedError`, with nothing deleted,
        when someone wrote it after it was read: unlike an update, a delete cannot be re-decided here.
        """

        async def attempt(number: int) -> bool:
            s3 = await self._s3()
            self.stats.deletes += 1
            self._version = None
            refused: ClientError | BotoCoreError | None = None
            with self._scope.request('DeleteObject', number, etag) as request:
                try:
                    await s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=etag)
                except (ClientError, BotoCoreError) as e:
                    code = _error_code(e)
                    if code in {'NoSuchKey', '404'}:
                        request.outcome = 'missing'
                        return False
                    if code not in {'PreconditionFailed', '412'}:
                        raise self._scope.classify(e, 'DeleteObject') from e
                    request.outcome = 'conflict'
                    refused = e
            if refused is None:
                return True
            # 412 is "changed since read" on AWS and moto, but SeaweedFS also answers it for a key that is gone.
            if await self._get(number) is None:
                return False
            self.stats.conflicts += 1
            raise ObjectChangedError(self.bucket, self.key, etag, 'DeleteObject') from refused

        return await self._scope.with_retries(attempt)

    def server_now(self) -> datetime:
        """The time now by the S3 endpoint's clock, to within `CLOCK_TOLERANCE`.

        The `Date` of the last response (one-second resolution) plus the monotonic time since estimates the
        endpoint's clock; this machine's clock is used when it agrees with that estimate within
        `CLOCK_TOLERANCE` (it is finer), the estimate when it does not. So machines whose clocks are wrong by
        minutes or days still agree on the age of a claim to within a few seconds. Before any response: this
        machine's clock.
        """
        local = datetime.now(tz=UTC)
        if self._server_clock is None:
            return local
        date, seen_at = self._server_clock
        # Date is truncated to the second: the endpoint's time was in [date, date + 1s) when it answered.
        estimate = date + timedelta(seconds=0.5 + time.monotonic() - seen_at)
        return local if abs(local - estimate) <= CLOCK_TOLERANCE else estimate

    def forget_cache(self) -> None:
        """Drop the cached version, so the next update starts with a GET."""
        self._version = None

    def _decode(self, version: _Version[T] | None) -> T:
        if version is None:
            return self.codec.empty()
        try:
            return self.codec.decode(version.body)
        except ValueError as e:
            self._version = None
            raise CorruptObjectError(self.bucket, self.key, _first_line(e)) from e

    async def _s3(self) -> S3Client:
        client = await self.client()
        self._scope.endpoint_url = client.meta.endpoint_url
        return client

    async def _revalidated(self, attempt: int, version: _Version[T] | None) -> _Version[T] | None:
        """The current version: `version` itself when S3 says it is still current (a conditional GET answered 304,
        no body), else the version read now (`None`: no object)."""
        if version is None:
            return await self._get(attempt)
        return await self._get(attempt, unless=version)

    async def _get(self, attempt: int, unless: _Version[T] | None = None) -> _Version[T] | None:
        """Read the object; with `unless`, only if it is no longer that version (`unless` is returned if it is)."""
        client = await self._s3()
        self.stats.gets += 1
        with self._scope.request('GetObject', attempt) as request:
            try:
                if unless is None:
                    response = await client.get_object(Bucket=self.bucket, Key=self.key)
                else:
                    response = await client.get_object(Bucket=self.bucket, Key=self.key, IfNoneMatch=unless.etag)
                async with response['Body'] as stream:
                    size = response.get('ContentLength', 0)
                    if self.max_object_bytes is not None and size > self.max_object_bytes:
                        raise ObjectTooLargeError(self.bucket, self.key, size, self.max_object_bytes)
                    body = await stream.read()
            except (ClientError, BotoCoreError) as e:
                if _error_code(e) in {'NoSuchKey', '404'}:
                    request.outcome = 'missing'
                    self._version = None
                    return None
                if unless is not None and _error_code(e) in {'304', 'NotModified'}:
                    request.outcome, request.etag = 'not modified', unless.etag
                    if isinstance(e, ClientError):
                        self._note_server_date(e.response)
                    self._version = unless
                    return unless
                raise self._scope.classify(e, 'GetObject') from e
            request.etag = response['ETag']
        self.stats.bytes_received += len(body)
        self._note_server_date(response)
        self._version = _Version(body, response['ETag'])
        return self._version

    async def _create(self, attempt: int, key: str, body: bytes) -> None:
        """Create the immutable object `key` with `body`, or make sure the one there holds exactly `body`."""
        client = await self._s3()
        self.stats.puts += 1
        self.stats.bytes_sent += len(body)
        with self._scope.request('PutObject', attempt) as request:
            try:
                response = await client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=self.content_type, IfNoneMatch='*'
                )
            except (ClientError, BotoCoreError) as e:
                if _error_code(e) not in _CONFLICT_CODES:
                    raise self._scope.classify(e, f'PutObject {key}') from e
                request.outcome = 'exists'
            else:
                request.etag = response['ETag']
                self._note_server_date(response)
                return
        existing = await self._get_other(attempt, key)
        if existing != body:
            raise CorruptObjectError(
                self.bucket, key, 'an immutable object holds other bytes than every writer would give it'
            )

    async def _get_other(self, attempt: int, key: str) -> bytes | None:
        client = await self._s3()
        self.stats.gets += 1
        with self._scope.request('GetObject', attempt) as request:
            try:
                response = await client.get_object(Bucket=self.bucket, Key=key)
                async with response['Body'] as stream:
                    size = response.get('ContentLength', 0)
                    if self.max_object_bytes is not None and size > self.max_object_bytes:
                        raise ObjectTooLargeError(self.bucket, key, size, self.max_object_bytes)
                    body = await stream.read()
            except (ClientError, BotoCoreError) as e:
                if _error_code(e) in {'NoSuchKey', '404'}:
                    request.outcome = 'missing'
                    return None
                raise self._scope.classify(e, f'GetObject {key}') from e
            request.etag = response['ETag']
        self.stats.bytes_received += len(body)
        return body

    def _check_size(self, key: str, body: bytes) -> None:
        # Refused before sending: an object over the limit could be written but never read back.
        if self.max_object_bytes is not None and len(body) > self.max_object_bytes:
            raise ObjectTooLargeError(self.bucket, key, len(body), self.max_object_bytes)

    def _note_server_date(self, response: Any) -> None:
        date = response.get('ResponseMetadata', {}).get('HTTPHeaders', {}).get('date')
        if not date:
            return
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError):
            return
        if parsed.tzinfo is not None:
            self._server_clock = (parsed, time.monotonic())

    async def _put(self, attempt: int, body: bytes, value: T, etag: str | None, *, from_cache: bool) -> None:
        client = await self._s3()
        self.stats.puts += 1
        self.stats.bytes_sent += len(body)
        # Whatever happens next, the cached version is no longer known to be current.
        self._version = None
        with self._scope.request('PutObject', attempt, etag) as request:
            try:
                if etag is None:
                    response = await client.put_object(
                        Bucket=self.bucket, Key=self.key, Body=body, ContentType=self.content_type, IfNoneMatch='*'
                    )
                else:
                    response = await client.put_object(
                        Bucket=self.bucket, Key=self.key, Body=body, ContentType=self.content_type, IfMatch=etag
                    )
            except (ClientError, BotoCoreError) as e:
                # IfMatch on a key that is gone: 404 on AWS and moto (412 elsewhere). Someone else changed it.
                if etag is not None and _error_code(e) in {'NoSuchKey', '404'}:
                    self.stats.conflicts += 1
                    raise _Retryable('object deleted since it was read', conflict=True) from e
                raise self._scope.classify(e, 'PutObject', from_cache=from_cache) from e
            request.etag = response['ETag']
        self._note_server_date(response)
        self._version = _Version(body, response['ETag'], value)


def _error_code(error: ClientError | BotoCoreError) -> str:
    if isinstance(error, ClientError):
        code = error.response.get('Error', {}).get('Code')
        if code:
            return str(code)
        return str(error.response.get('ResponseMetadata', {}).get('HTTPStatusCode', ''))
    return ''


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
