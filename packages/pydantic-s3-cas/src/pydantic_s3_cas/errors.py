"""Typed errors for everything that can go wrong between us and an S3 object.

Every error names the object as `s3://bucket/key` and says what to do about it, because the person reading it
is usually looking at a Lambda log, far from the code that raised it.
"""

from __future__ import annotations as _annotations

__all__ = (
    'S3PersistenceError',
    'BucketNotFoundError',
    'AccessDeniedError',
    'CredentialsError',
    'ConditionalWritesUnsupportedError',
    'EndpointUnreachableError',
    'CorruptObjectError',
    'ObjectTooLargeError',
    'RetriesExhaustedError',
    'ObjectNotFoundError',
    'ObjectExistsError',
    'ObjectChangedError',
    'ClockSkewError',
    'DeadlineExceededError',
    'quoted',
    'shortened',
)

QUOTE_LIMIT = 100
"""Most characters of user input an error message quotes."""


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)`, cut to `limit` characters with a marker saying how long it was.

    Error messages and log records quote what a caller sent (a run id, a node id) to say what was wrong with
    it; a 10 MB run id must not become a 10 MB message.
    """
    # The marker gives the length of the value, not of its repr (a 250-character id is not 252 characters).
    return shortened(repr(value), limit, length=len(value) if isinstance(value, str | bytes) else None)


def shortened(text: str, limit: int = QUOTE_LIMIT, *, length: int | None = None) -> str:
    """`text`, cut to `limit` characters with a marker saying how long it was (`length`, by default its own)."""
    return text if len(text) <= limit else f'{text[:limit]}... ({len(text) if length is None else length} characters)'


class S3PersistenceError(Exception):
    """Base class of every error this library raises about an S3 object."""

    def __init__(self, bucket: str, key: str, message: str) -> None:
        self.bucket = bucket
        self.key = key
        super().__init__(f'{self.uri}: {message}')

    @property
    def uri(self) -> str:
        """The object this error is about, as `s3://bucket/key`."""
        return f's3://{self.bucket}/{self.key}'


class BucketNotFoundError(S3PersistenceError):
    """The bucket does not exist (S3 `NoSuchBucket`)."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(
            bucket,
            key,
            f'bucket {bucket!r} does not exist. Create it, or check the bucket name and the region/endpoint '
            '(AWS_REGION, AWS_ENDPOINT_URL_S3).',
        )


# The IAM action each S3 operation needs, and whether it is granted on the bucket (listing) or on the object.
_PERMISSIONS = {
    'GetObject': ('s3:GetObject', False),
    'HeadObject': ('s3:GetObject', False),
    'PutObject': ('s3:PutObject', False),
    'DeleteObject': ('s3:DeleteObject', False),
    'ListObjectsV2': ('s3:ListBucket', True),
}


class AccessDeniedError(S3PersistenceError):
    """S3 refused the request (`AccessDenied`, 403); the message names the permission the operation needs."""

    def __init__(self, bucket: str, key: str, operation: str) -> None:
        self.operation = operation
        permission, on_bucket = _PERMISSIONS.get(operation, (f's3:{operation}', False))
        self.permission = permission
        maybe_missing = (
            ' (S3 also answers 403 for an object that does not exist when the identity may not list the bucket)'
            if operation == 'GetObject'
            else ''
        )
        resource = (
            f'arn:aws:s3:::{bucket} (for keys starting with {key!r})' if on_bucket else f'arn:aws:s3:::{bucket}/{key}'
        )
        super().__init__(
            bucket,
            key,
            f'access denied for {operation}{maybe_missing}. Grant {permission} on {resource} to the identity '
            'these credentials belong to.',
        )


class CredentialsError(S3PersistenceError):
    """No credentials were found, or S3 rejected them (expired token, unknown key, bad signature)."""

    def __init__(self, bucket: str, key: str, detail: str) -> None:
        super().__init__(
            bucket,
            key,
            f'credentials missing or rejected ({detail}). Refresh or configure AWS credentials '
            '(AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or an execution role).',
        )


class ClockSkewError(S3PersistenceError):
    """S3 refused the request because this machine's clock is too far from S3's (`RequestTimeTooSkewed`).

    Not retried: every retry is signed with the same wrong clock.
    """

    def __init__(self, bucket: str, key: str, operation: str) -> None:
        self.operation = operation
        super().__init__(
            bucket,
            key,
            f"{operation} refused: this machine's clock differs from S3's by more than S3 accepts "
            "(RequestTimeTooSkewed). Synchronise the clock (NTP, chrony, or the hypervisor's time service) and retry.",
        )


class DeadlineExceededError(S3PersistenceError):
    """The caller's deadline (see `storage_deadline`) came before the storage call could finish.

    Whatever was not written was not written: the run is left as the last completed write made it.
    """

    def __init__(self, bucket: str, key: str, attempts: int, last_error: str | None) -> None:
        self.attempts = attempts
        after = f'; last error: {last_error}' if last_error else ''
        super().__init__(
            bucket,
            key,
            f'deadline reached after {attempts} attempt(s){after}. The call was abandoned before the deadline; '
            'call again with more time (the run resumes where the last completed write left it).',
        )


class EndpointUnreachableError(S3PersistenceError):
    """The S3 endpoint could not be reached within the retry bounds."""

    def __init__(self, bucket: str, key: str, endpoint: str, attempts: int, detail: str) -> None:
        self.endpoint = endpoint
        self.attempts = attempts
        super().__init__(
            bucket,
            key,
            f'endpoint {endpoint} unreachable after {attempts} attempt(s) ({detail}). Check the network and '
            'AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL.',
        )


class CorruptObjectError(S3PersistenceError):
    """The object exists but does not decode as what we store there; it was left untouched."""

    def __init__(self, bucket: str, key: str, detail: str) -> None:
        super().__init__(
            bucket,
            key,
            f'object is not a valid snapshot list for this graph ({detail}). It was left untouched: inspect it, '
            'move it aside or delete it, or use another run id.',
        )


class ObjectTooLargeError(S3PersistenceError):
    """The object is larger than the configured limit, so it was not downloaded."""

    def __init__(self, bucket: str, key: str, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            bucket,
            key,
            f'object is {size} bytes, over the {limit}-byte limit, so it was not downloaded. Raise max_object_bytes '
            'if this run really is that large.',
        )


class RetriesExhaustedError(S3PersistenceError):
    """Conflicts or transient failures went on past the retry bounds."""

    def __init__(self, bucket: str, key: str, attempts: int, elapsed: float, last_error: str) -> None:
        self.attempts = attempts
        self.elapsed = elapsed
        super().__init__(
            bucket,
            key,
            f'gave up after {attempts} attempt(s) in {elapsed:.1f}s; last error: {last_error}. Too many writers '
            'are contending for this run, or S3 is throttling: retry later, or raise max_attempts/max_elapsed.',
        )


class ObjectNotFoundError(S3PersistenceError):
    """The object does not exist: an unknown run, or one deleted meanwhile."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(bucket, key, 'no such object. Check the run id, the bucket and the prefix.')


class ObjectExistsError(S3PersistenceError):
    """A create-only write found the object already there; nothing was overwritten."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(bucket, key, 'object already exists and was left untouched. Use another run id.')


class ObjectChangedError(S3PersistenceError):
    """The object no longer has the ETag a conditional request named: someone wrote it meanwhile."""

    def __init__(self, bucket: str, key: str, etag: str, operation: str) -> None:
        self.etag = etag
        super().__init__(
            bucket,
            key,
            f'object changed since it was read (it no longer has ETag {etag}), so {operation} did nothing. '
            'Read it again and decide again: a worker may be advancing this run.',
        )


class ConditionalWritesUnsupportedError(S3PersistenceError):
    """The endpoint accepted a conditional write that must have failed: it ignores `If-Match`/`If-None-Match`."""

    def __init__(self, bucket: str, key: str, endpoint: str, header: str) -> None:
        self.endpoint = endpoint
        self.header = header
        super().__init__(
            bucket,
            key,
            f'endpoint {endpoint} ignores {header} on PutObject (a write that had to be refused succeeded), so '
            'compare-and-swap is impossible there: concurrent workers would overwrite each other and fork runs. '
            'Use a store that honours If-Match and If-None-Match (AWS S3, SeaweedFS, a recent MinIO).',
        )
