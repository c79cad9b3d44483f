"""`S3MemoryStore`: pydantic-ai-harness's `MemoryStore` in S3, one object per memory file.

Key layout under the store's prefix:

```text
files/{path}              one memory file: content, version, metadata, and its recent operation receipts
receipts/{operation_id}   where an operation's receipt lives, so `get_operation` finds it by id alone
```

A file's version is a random id stored in the object, not its ETag, so writing back earlier content never
brings back an earlier version. Every write is one compare-and-swap on the file's object (`If-Match`, or
`If-None-Match` to create) that carries the operation's receipt in the same body: a crash can never leave a
receipt without its change, nor a change without its receipt. The `receipts/` index entry is written after it
and only speeds up `get_operation`; a replayed write finds the receipt in the file itself even if the index
entry was never written. A delete writes a tombstone (no content, the receipt kept), indexes the receipt, and then
removes the tombstone. A delete that crashes in between leaves the tombstone: `read` and `search` skip it, but
`list_paths` (one listing, which cannot tell a tombstone from a file) still shows the path until the delete is
replayed with its operation (the replay removes it), or the path is written again.
"""

from __future__ import annotations as _annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic_ai_harness.memory import (
    MemoryConflictError,
    MemoryFile,
    MemoryMutation,
    MemoryOperation,
    MemoryOperationConflictError,
    MemorySearchResult,
)
from pydantic_ai_harness.memory._store import (
    decode_metadata,
    encode_metadata,
    is_direct_child,
    lexical_search,
    validate_store_path,
    validate_store_prefix,
)

from pydantic_s3_cas import CasObject, Change, ObjectChangedError

from ._location import S3Store, key_part

__all__ = ('S3MemoryStore', 'RECEIPTS_PER_FILE')

RECEIPTS_PER_FILE = 64
"""Receipts a file keeps of the operations that last changed it (the `receipts/` index keeps every one)."""


class _Receipt(BaseModel):
    model_config = ConfigDict(frozen=True, extra='forbid')
    operation_id: str
    fingerprint: str
    path: str
    version: str | None
    existed: bool

    @classmethod
    def of(cls, operation: MemoryOperation, path: str, mutation: MemoryMutation) -> _Receipt:
        return cls(
            operation_id=operation.id,
            fingerprint=operation.fingerprint,
            path=path,
            version=mutation.version,
            existed=mutation.existed,
        )

    def mutation(self, operation: MemoryOperation) -> MemoryMutation:
        """The recorded mutation, replayed; raises the harness's conflict error for another fingerprint."""
        if operation.fingerprint != self.fingerprint:
            raise MemoryOperationConflictError(
                f'operation id {operation.id!r} was reused with different arguments (a different fingerprint)'
            )
        return MemoryMutation(version=self.version, replayed=True, existed=self.existed)


class _MemoryObject(BaseModel):
    model_config = ConfigDict(frozen=True, extra='forbid')
    content: str | None
    """`None` for a tombstone: the file is deleted, its receipts are kept until the object is removed."""
    version: str
    operation_id: str | None = None
    metadata: str | None = None
    receipts: tuple[_Receipt, ...] = ()

    def receipt(self, operation_id: str) -> _Receipt | None:
        return next((r for r in self.receipts if r.operation_id == operation_id), None)


_FILE = TypeAdapter(_MemoryObject)
_RECEIPT = TypeAdapter(_Receipt)


def _live(stored: _MemoryObject | None) -> _MemoryObject | None:
    return stored if stored is not None and stored.content is not None else None


def _mutate(
    path: str, expected_version: str | None, operation: MemoryOperation | None, new: _MemoryObject
) -> Callable[[_MemoryObject | None], Change[_MemoryObject | None, MemoryMutation]]:
    """The change of one write, or of one delete when `new` is a tombstone (`content=None`), receipt included."""
    deleting = new.content is None

    def change(stored: _MemoryObject | None) -> Change[_MemoryObject | None, MemoryMutation]:
        if operation is not None and stored is not None and (receipt := stored.receipt(operation.id)) is not None:
            return Change(None, receipt.mutation(operation))
        current = _live(stored)
        if (current.version if current is not None else None) != expected_version:
            what = 'deleted' if deleting else 'written'
            raise MemoryConflictError(f'memory path {path!r} changed before it could be {what}')
        if deleting and current is None:
            return Change(None, MemoryMutation(version=None, replayed=False, existed=False))
        version = None if deleting else new.version
        mutation = MemoryMutation(version=version, replayed=False, existed=current is not None)
        receipts = stored.receipts if stored is not None else ()
        if operation is not None:
            receipts = (*receipts, _Receipt.of(operation, path, mutation))[-RECEIPTS_PER_FILE:]
        return Change(new.model_copy(update={'receipts': receipts}), mutation)

    return change


class S3MemoryStore(S3Store):
    """A pydantic-ai-harness `MemoryStore` (with metadata and search) keeping memory files in S3.

    ```python
    store = S3MemoryStore(bucket='my-bucket', prefix='memory/')
    agent = Agent('openai:gpt-5', capabilities=[Memory(store=store)])
    ```

    Takes `(bucket=..., prefix='', **options)`, as every store of this package does (see `S3Store`).
    """

    async def read(self, path: str, *, max_chars: int) -> MemoryFile | None:
        validate_store_path(path)
        if max_chars <= 0:
            raise ValueError('max_chars must be positive')
        stored = _live(await self._file(path).load())
        if stored is None or stored.content is None:
            return None
        return MemoryFile(
            content=stored.content[:max_chars],
            version=stored.version,
            operation_id=stored.operation_id,
            truncated=len(stored.content) > max_chars,
            metadata=decode_metadata(stored.metadata),
        )

    async def get_operation(self, operation: MemoryOperation) -> MemoryMutation | None:
        receipt = await self._receipt(operation.id).load()
        return receipt.mutation(operation) if receipt is not None else None

    async def write(
        self, path: str, content: str, *, expected_version: str | None, operation: MemoryOperation | None = None
    ) -> MemoryMutation:
        """Create (`expected_version=None`) or replace `path` if its version is `expected_version`.

        Raises `MemoryConflictError` when it is not, and `MemoryOperationConflictError` when `operation`'s id
        was used with another fingerprint; a repeated `operation` returns its first result, `replayed=True`.
        """
        return await self.write_with_metadata(
            path, content, expected_version=expected_version, metadata=None, operation=operation
        )

    async def write_with_metadata(
        self,
        path: str,
        content: str,
        *,
        expected_version: str | None,
        metadata: Mapping[str, str] | None,
        operation: MemoryOperation | None = None,
    ) -> MemoryMutation:
        validate_store_path(path)
        encoded = encode_metadata(metadata)
        if operation is not None and (replayed := await self.get_operation(operation)) is not None:
            return replayed
        new = _MemoryObject(
            content=content,
            version=uuid.uuid4().hex,
            operation_id=operation.id if operation else None,
            metadata=encoded,
        )
        change = _mutate(path, expected_version, operation, new)
        mutation: MemoryMutation = await self._file(path).update(change, expect_missing=expected_version is None)
        await self._index_receipt(operation, path, mutation)
        return mutation

    async def delete(
        self, path: str, *, expected_version: str | None, operation: MemoryOperation | None = None
    ) -> MemoryMutation:
        """Delete `path` if its version is `expected_version` (`None`: succeed only if it does not exist)."""
        validate_store_path(path)
        file = self._file(path)
        if operation is not None and (replayed := await self.get_operation(operation)) is not None:
            if replayed.existed and replayed.version is None:  # it deleted a file: finish it (a crash may have left
                # its tombstone behind)
                await self._remove_tombstone(file)
            return replayed
        tombstone = _MemoryObject(content=None, version=uuid.uuid4().hex)
        change = _mutate(path, expected_version, operation, tombstone)
        mutation: MemoryMutation = await file.update(change)
        await self._index_receipt(operation, path, mutation)
        if mutation.existed and mutation.version is None:  # also when replayed from the tombstone's own receipt
            await self._remove_tombstone(file)
        return mutation

    async def list_paths(self, prefix: str = '', *, limit: int) -> list[str]:
        """Stored paths starting with `prefix`, sorted (S3 lists keys in that order), at most `limit`."""
        validate_store_prefix(prefix)
        if limit <= 0:
            raise ValueError('limit must be positive')
        paths: list[str] = []
        async for path in self._paths(prefix):
            paths.append(path)
            if len(paths) == limit:
                break
        return paths

    async def search(
        self, prefix: str, query: str, *, limit: int, max_files: int, max_chars: int, max_file_chars: int
    ) -> MemorySearchResult:
        """Lexical search of the files directly below `prefix` (at most `max_files`, read concurrently)."""
        validate_store_prefix(prefix)
        if not query.split() or limit <= 0 or max_files <= 0 or max_chars <= 0 or max_file_chars <= 0:
            return MemorySearchResult(matches=[], scanned=0, truncated=False)
        selected: list[str] = []
        async for path in self._paths(prefix):
            if is_direct_child(prefix, path):
                selected.append(path)
                if len(selected) > max_files:
                    break
        loaded = await asyncio.gather(*(self._file(path).load() for path in selected[:max_files]))
        files = [
            (path, stored.content)
            for path, stored in zip(selected, loaded, strict=False)
            if stored is not None and stored.content is not None
        ]
        content_truncated = any(len(content) > max_file_chars for _, content in files)
        result = await lexical_search(
            [(path, content[:max_file_chars]) for path, content in files],
            query,
            limit=limit,
            max_files=max_files,
            max_chars=max_chars,
            score_prefix=prefix,
        )
        return MemorySearchResult(
            matches=result.matches,
            scanned=result.scanned,
            truncated=result.truncated or content_truncated or len(selected) > max_files,
        )

    async def _paths(self, prefix: str) -> AsyncIterator[str]:
        skip = len(self.location.prefix) + len('files/')
        async for info in self.location.list('files/' + prefix):
            yield info.key[skip:]

    async def _index_receipt(self, operation: MemoryOperation | None, path: str, mutation: MemoryMutation) -> None:
        """Record where `operation`'s receipt is, once its change has landed (the same entry however often)."""
        if operation is None:
            return
        receipt = _Receipt.of(operation, path, mutation)

        def record(existing: _Receipt | None) -> Change[_Receipt | None, None]:
            return Change(receipt if existing is None else None, None)

        await self._receipt(operation.id).update(record, expect_missing=True)

    async def _remove_tombstone(self, file: CasObject[_MemoryObject | None]) -> None:
        """Remove the tombstone a delete left, unless a writer has replaced it meanwhile (then theirs stands)."""
        stored, etag = await file.load_versioned()
        if stored is None or stored.content is not None or etag is None:
            return
        try:
            await file.delete(etag)
        except ObjectChangedError:
            return

    def _file(self, path: str) -> CasObject[_MemoryObject | None]:
        return self.location.object(f'files/{path}', _FILE)

    def _receipt(self, operation_id: str) -> CasObject[_Receipt | None]:
        return self.location.object(f'receipts/{key_part(operation_id, what="operation id")}.json', _RECEIPT)
