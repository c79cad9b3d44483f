"""Storage layer: S3 objects updated by compare-and-swap. Knows nothing about pydantic-graph."""

from .cas import CasObject, CasStats, Change, Codec, RetryPolicy
from .client import ClientSettings, default_session, shared_client
from .errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptObjectError,
    CredentialsError,
    EndpointUnreachableError,
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
    'RetriesExhaustedError',
)
