"""Runs as files: export a run as the file `FileStatePersistence` reads, and import such a file as a new run.

An export is byte for byte the file of the run's whole history (segments and head assembled), written whole or
not at all. An import never overwrites: its head is created with `IfNoneMatch='*'`, after the segments a long file
is stored in at once.
"""

from __future__ import annotations as _annotations

import os
import secrets
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pydantic_core
from pydantic_graph.graph import Graph

from pydantic_s3_cas import Change, ObjectExistsError

from .history import raw_rows
from .layout import decode_head, encode_head, seal, segment_key
from .persistence import decode_snapshot_list, run_object_key
from .run_objects import RunObjects, RunSummary

__all__ = ('export_run', 'import_run', 'write_file')


async def export_run(objects: RunObjects, run_id: str, path: str | os.PathLike[str], *, overwrite: bool) -> RunSummary:
    """See `RunStore.export_run`."""
    summary = await objects.get_run(run_id)
    head_body, _ = await objects.read(summary.key)
    body = await objects.assemble(summary.key, head_body)
    await anyio.to_thread.run_sync(write_file, Path(path), body, overwrite)
    return summary


async def import_run(
    objects: RunObjects, path: str | os.PathLike[str], run_id: str, graph: Graph[Any, Any, Any] | None
) -> RunSummary:
    """See `RunStore.import_run`."""
    key = run_object_key(objects.prefix, run_id)
    body = await anyio.Path(path).read_bytes()
    _check_json(path, body)
    try:
        head = decode_head(body)
        if head.segmented:
            raise ValueError('a segmented run head, not a snapshot list')
        if graph is None:
            raw_rows(body)
        else:
            decode_snapshot_list(body, graph)
    except ValueError as e:
        raise ValueError(f'{path} is not a pydantic-graph snapshot list: {str(e).splitlines()[0]}') from e
    # Random: a file's bytes repeat, so a digest of them would meet the segments of an earlier import of it.
    sealed_head, segments = seal(head, None, lambda: secrets.token_hex(16))
    stored = body if not segments else encode_head(sealed_head)
    creates = [(segment_key(key, sealed_head.segment_id or '', s.seq), s.body) for s in segments]

    def create(current: bytes | None) -> Change[bytes | None, None]:
        if current is not None:
            raise ObjectExistsError(objects.bucket, key)
        return Change(stored, None, creates)

    await objects.object(key).update(create)
    return await objects.get_run(run_id)


def _check_json(path: str | os.PathLike[str], body: bytes) -> None:
    """Say "not JSON" of a file that is not (an empty one, a zip), before saying what JSON it should hold."""
    try:
        pydantic_core.from_json(body)
    except ValueError as e:
        why = 'it is empty' if not body.strip() else str(e).splitlines()[0]
        message = f'{path} is not JSON ({why}): give a file written by FileStatePersistence or `runs export`'
        raise ValueError(message) from None


def write_file(path: Path, body: bytes, overwrite: bool) -> None:
    """Write `body` to `path` whole or not at all, with the mode the user's umask gives a new file; an existing
    file only with `overwrite` (an export, and the CLI's HTML page of a run).

    Every way the path can be wrong is an `OSError` whose message says which path and what to do.
    """
    if path.is_dir():
        raise IsADirectoryError(f'{path} is a folder: give the path of the file to write')
    if path.exists() and not overwrite:
        raise FileExistsError(f'{path} exists: choose another path, or overwrite it (--overwrite)')
    if not path.parent.is_dir():
        raise FileNotFoundError(f'folder {path.parent} does not exist: create it first')
    # Written beside the target and renamed over it, so a reader never sees half a file. os.open applies the
    # umask to 0o666 as any new file gets (tempfile would make it 0o600).
    temporary = path.parent / f'.{path.name}.{secrets.token_hex(4)}'
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, 'wb') as file:
            file.write(body)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise OSError(e.errno, f'cannot write {path}: {e.strerror}') from e
    try:
        os.replace(temporary, path)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise OSError(e.errno, f'cannot write {path}: {e.strerror}') from e
