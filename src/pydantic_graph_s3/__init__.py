"""pydantic-graph 1.x state persistence in Amazon S3, with compare-and-swap writes instead of lock files."""

from .persistence import S3StatePersistence, run_object_key, validate_run_id
from .storage import (
    AccessDeniedError,
    BucketNotFoundError,
    CasStats,
    ClientSettings,
    CorruptObjectError,
    CredentialsError,
    EndpointUnreachableError,
    ObjectTooLargeError,
    RetriesExhaustedError,
    RetryPolicy,
    S3PersistenceError,
)

__all__ = (
    'S3StatePersistence',
    'run_object_key',
    'validate_run_id',
    'RetryPolicy',
    'ClientSettings',
    'CasStats',
    'S3PersistenceError',
    'AccessDeniedError',
    'BucketNotFoundError',
    'CorruptObjectError',
    'CredentialsError',
    'EndpointUnreachableError',
    'ObjectTooLargeError',
    'RetriesExhaustedError',
)
