"""S3 objects changed only by compare-and-swap: the storage core of pydantic-graph-s3 and pydantic-ai-harness-s3.

Knows nothing about pydantic-graph or pydantic-ai: typed errors, the shared client, the compare-and-swap
primitive, telemetry, the endpoint self-check and the embedded S3 server (`pydantic_s3_cas.embedded`).
"""

from .cas import CasObject, CasStats, Change, Codec, ObjectInfo, RetryPolicy, list_objects, storage_deadline
from .client import ClientSettings, close_shared_client, default_session, shared_client
from .connection import S3Connection
from .errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ClockSkewError,
    ConditionalWritesUnsupportedError,
    CorruptObjectError,
    CredentialsError,
    DeadlineExceededError,
    EndpointUnreachableError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    RetriesExhaustedError,
    S3PersistenceError,
    quoted,
    shortened,
)
from .names import validate_bucket_name, validate_prefix
from .probe import ensure_conditional_writes, verify_conditional_writes

__all__ = (
    'CasObject',
    'CasStats',
    'Change',
    'Codec',
    'RetryPolicy',
    'ObjectInfo',
    'list_objects',
    'ClientSettings',
    'default_session',
    'shared_client',
    'close_shared_client',
    'S3Connection',
    'validate_bucket_name',
    'validate_prefix',
    'verify_conditional_writes',
    'ensure_conditional_writes',
    'ConditionalWritesUnsupportedError',
    'S3PersistenceError',
    'AccessDeniedError',
    'BucketNotFoundError',
    'CorruptObjectError',
    'CredentialsError',
    'EndpointUnreachableError',
    'ObjectTooLargeError',
    'ObjectNotFoundError',
    'ObjectExistsError',
    'ObjectChangedError',
    'RetriesExhaustedError',
    'ClockSkewError',
    'DeadlineExceededError',
    'storage_deadline',
    'quoted',
    'shortened',
)
