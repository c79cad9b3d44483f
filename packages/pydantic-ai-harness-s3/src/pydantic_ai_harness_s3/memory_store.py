"""`S3MemoryStore`: pydantic-ai-harness's `MemoryStore` in S3, one object per memory file.

Key layout under the store's prefix:

```text
files/{path}              one memory file: content, version, metadata, and the receipts of its recent operations
receipts/{operation_id}   the operation's intent: its fingerprint and the path it changes, created before the change
applied/{operation_id}    the operation's receipt, once it has left its file's window of recent receipts
```

A file's version is a random id stored in the object, not its ETag, so writing back earlier content never
brings back an earlier version. Every write is one compare-and-swap on the file's object (`If-Match`, or
`If-None-Match` to create) that carries the operation's receipt in the same body: a crash can never leave a
receipt without its change, nor a change without its receipt.

A file keeps the receipts of its last `RECEIPTS_PER_FILE` operations. The write that pushes a receipt out of that
window creates its `applied/` object first (create-only, the same bytes from every writer), in the same
compare-and-swap attempt, before its own body can land; a delete does the same for every receipt of its
tombstone before removing it. So every applied operation's receipt is in its file or under `applied/`, and
`get_operation` finds it from the intent, which names the file: the window never decides, however many writes
follow a writer that died right after its change. (Stores written by 0.1 keep a receipt under `receipts/` in
place of an intent; those are read as receipts.)

A delete writes a tombstone (no content, the receipt kept), moves the tombstone's receipts to `applied/`, and
then removes the tombstone. A delete that crashes in between leaves the tombstone: `read` and `search` skip it,
but `list_paths` (one listing, which cannot tell a tombstone from a file) still shows the path until the delete
is replayed with its operation (the replay removes it), or the path is written again.
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

RECEIPTS_PER_FILE = 8
"""Receipts a file keeps of the operations that last changed it; older ones are under `applied/`."""


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
        _check_fingerprint(operation, self.fingerprint)
        return MemoryMutation(version=self.version, replayed=True, existed=self.existed)


class _Intent(BaseModel):
    """Created before an operation's change is tried: whether it landed is told by its file or by `applied/`."""

    model_config = ConfigDict(frozen=True, extra='forbid')
    operation_id: str
    fingerprint: str
    path: str

    def check(self, operation: MemoryOperation, path: str) -> None:
        _check_fingerprint(operation, self.fingerprint)
        if path != self.path:
            raise MemoryOperationConflictError(
                f'operation id {operation.id!r} was reused for another memory path ({self.path!r}, now {path!r})'
            )


def _check_fingerprint(operation: MemoryOperation, fingerprint: str) -> None:
    if operation.fingerprint != fingerprint:
        raise MemoryOperationConflictError(
            f'operation id {operation.id!r} was reused with different arguments (a different fingerprint)'
        )


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
_OPERATION: TypeAdapter[_Intent | _Receipt] = TypeAdapter(_Intent | _Receipt)  # a `_Receipt` here: written by 0.1


def _live(stored: _MemoryObject | None) -> _MemoryObject | None:
    return stored if stored is not None and stored.content is not None else None


def _mutate(
    path: str,
    expected_version: str | None,
    operation: MemoryOperation | None,
    new: _MemoryObject,
    applied_key: Callable[[str], str],
) -> Callable[[_MemoryObject | None], Change[_MemoryObject | None, MemoryMutation]]:
    """The change of one write, or of one delete when `new` is a tombstone (`content=None`), receipt included.

    Receipts pushed out of the file's window are created under `applied_key(operation_id)` before the new body
    is written, so no applied operation is ever without a receipt somewhere.
    """
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
            receipts = (*receipts, _Receipt.of(operation, path, mutation))
        dropped, kept = receipts[:-RECEIPTS_PER_FILE], receipts[-RECEIPTS_PER_FILE:]
        creates = [(applied_key(r.operation_id), _RECEIPT.dump_json(r)) for r in dropped]
        return Change(new.model_copy(update={'receipts': kept}), mutation, creates)

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
        """The result of `operation` if it was applied, replayed (`None` if it never was)."""
        entry = await self._operation(operation.id).load()
        if entry is None:
            return None
        if isinstance(entry, _Receipt):
            return entry.mutation(operation)
        _check_fingerprint(operation, entry.fingerprint)
        return await self._applied(operation, entry)

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
        if operation is not None and (replayed := await self._begin(operation, path)) is not None:
            return replayed
        new = _MemoryObject(
            content=content,
            version=uuid.uuid4().hex,
            operation_id=operation.id if operation else None,
            metadata=encoded,
        )
        return await self._change(path, expected_version, operation, new, expect_missing=expected_version is None)

    async def delete(
        self, path: str, *, expected_version: str | None, operation: MemoryOperation | None = None
    ) -> MemoryMutation:
        """Delete `path` if its version is `expected_version` (`None`: succeed only if it does not exist)."""
        validate_store_path(path)
        if operation is not None and (replayed := await self._begin(operation, path)) is not None:
            mutation = replayed
        else:
            tombstone = _MemoryObject(content=None, version=uuid.uuid4().hex)
            mutation = await self._change(path, expected_version, operation, tombstone, expect_missing=False)
            if operation is not None and not mutation.existed and not mutation.replayed:
                # Nothing to delete, so no file carries the receipt: it goes straight to `applied/`.
                await self._keep_receipt(_Receipt.of(operation, path, mutation))
        if mutation.existed and mutation.version is None:  # it deleted a file: finish it (a crash, or this call
            # cut short, may have left its tombstone behind)
            await self._remove_tombstone(self._file(path))
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

    async def _begin(self, operation: MemoryOperation, path: str) -> MemoryMutation | None:
        """Create `operation`'s intent; if it had one already, the operation's result if it was applied.

        Raises `MemoryOperationConflictError` when the id was used with another fingerprint or path.
        """
        intent = _Intent(operation_id=operation.id, fingerprint=operation.fingerprint, path=path)

        def create(existing: _Intent | _Receipt | None) -> Change[_Intent | _Receipt | None, _Intent | _Receipt | None]:
            return Change(intent if existing is None else None, existing)

        existing = await self._operation(operation.id).update(create, expect_missing=True)
        if existing is None:
            return None
        if isinstance(existing, _Receipt):
            return existing.mutation(operation)
        existing.check(operation, path)
        return await self._applied(operation, existing)

    async def _applied(self, operation: MemoryOperation, intent: _Intent) -> MemoryMutation | None:
        """The result of an operation with `intent`, from its file's receipts or else from `applied/`.

        The file is read first: a receipt leaves it only after its `applied/` object exists, so one missing from
        the file and then from `applied/` was not applied when the file was read.
        """
        stored = await self._file(intent.path).load()
        receipt = stored.receipt(operation.id) if stored is not None else None
        if receipt is None:
            receipt = await self._receipt(operation.id).load()
        return receipt.mutation(operation) if receipt is not None else None

    async def _change(
        self,
        path: str,
        expected_version: str | None,
        operation: MemoryOperation | None,
        new: _MemoryObject,
        *,
        expect_missing: bool,
    ) -> MemoryMutation:
        """Write `new` (a file or a tombstone) with `operation`'s receipt, if `path` is at `expected_version`."""
        change = _mutate(path, expected_version, operation, new, self._applied_key)
        try:
            mutation: MemoryMutation = await self._file(path).update(change, expect_missing=expect_missing)
        except MemoryConflictError:
            # A replay racing the first attempt of the same operation: it may have landed, and left the window.
            if operation is not None and (replayed := await self.get_operation(operation)) is not None:
                return replayed
            raise
        return mutation

    async def _remove_tombstone(self, file: CasObject[_MemoryObject | None]) -> None:
        """Remove the tombstone a delete left, unless a writer has replaced it meanwhile (then theirs stands).

        Its receipts go to `applied/` first, as when they leave a file's window.
        """
        stored, etag = await file.load_versioned()
        if stored is None or stored.content is not None or etag is None:
            return
        await asyncio.gather(*(self._keep_receipt(receipt) for receipt in stored.receipts))
        try:
            await file.delete(etag)
        except ObjectChangedError:
            return

    async def _keep_receipt(self, receipt: _Receipt) -> None:
        """Create `receipt`'s `applied/` object (create-only: the same receipt from every writer)."""

        def create(existing: _Receipt | None) -> Change[_Receipt | None, None]:
            return Change(receipt if existing is None else None, None)

        await self._receipt(receipt.operation_id).update(create, expect_missing=True)

    def _file(self, path: str) -> CasObject[_MemoryObject | None]:
        return self.location.object(f'files/{path}', _FILE)

    def _operation(self, operation_id: str) -> CasObject[_Intent | _Receipt | None]:
        return self.location.object(f'receipts/{key_part(operation_id, what="operation id")}.json', _OPERATION)

    def _receipt(self, operation_id: str) -> CasObject[_Receipt | None]:
        return self.location.object(self._applied_name(operation_id), _RECEIPT)

    def _applied_key(self, operation_id: str) -> str:
        return self.location.prefix + self._applied_name(operation_id)

    @staticmethod
    def _applied_name(operation_id: str) -> str:
        return f'applied/{key_part(operation_id, what="operation id")}.json'
