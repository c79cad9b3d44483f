"""Storage layer: S3 objects updated by compare-and-swap. Knows nothing about pydantic-graph."""

from .cas import CasObject, CasStats, Change, Codec, ObjectInfo, RetryPolicy, list_objects
from .client import ClientSettings, default_session, shared_client
from .errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ConditionalWritesUnsupportedError,
    CorruptObjectError,
    CredentialsError,
    EndpointUnreachableError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    RetriesExhaustedError,
    S3PersistenceError,
)
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
)
