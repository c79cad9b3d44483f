"""pydantic-graph 1.x state persistence in Amazon S3, with compare-and-swap writes instead of lock files."""

from .persistence import S3StatePersistence, decode_snapshot_list, run_object_key, validate_run_id
from .runs import PruneOutcome, RunHistory, RunStore, RunSummary, SnapshotRow
from .storage import (
    AccessDeniedError,
    BucketNotFoundError,
    CasStats,
    ClientSettings,
    CorruptObjectError,
    CredentialsError,
    EndpointUnreachableError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    RetriesExhaustedError,
    RetryPolicy,
    S3PersistenceError,
)

__all__ = (
    'S3StatePersistence',
    'run_object_key',
    'validate_run_id',
    'decode_snapshot_list',
    'RunStore',
    'RunSummary',
    'RunHistory',
    'SnapshotRow',
    'PruneOutcome',
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
    'ObjectNotFoundError',
    'ObjectExistsError',
    'ObjectChangedError',
    'RetriesExhaustedError',
)
