"""Storage layer: S3 objects updated by compare-and-swap. Knows nothing about pydantic-graph."""

from .cas import CasObject, CasStats, Change, Codec, ObjectInfo, RetryPolicy, list_objects
from .client import ClientSettings, default_session, shared_client
from .errors import (
    AccessDeniedError,
    BucketNotFoundError,
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
