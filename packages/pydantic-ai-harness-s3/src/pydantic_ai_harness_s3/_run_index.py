"""`list_runs` without a GET per run: a memo of the run records already read, keyed by their ETags.

Run records are create-only and never rewritten, so a record whose listing shows the ETag the memo has for it is
the memo's copy. `list_runs` lists `runs/` (one request per 1,000 runs), reads the memo (one GET), reads only the
records the memo lacks, and writes the memo back when the listing changed it. The memo is a cache: bytes it does
not recognise read as an empty memo, and a lost or stale memo only costs the GETs it would have saved.
"""

from __future__ import annotations as _annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from pydantic import TypeAdapter
from pydantic_ai_harness.step_persistence import RunRecord

from pydantic_s3_cas import Change, ObjectInfo

from ._location import S3Location
from ._objects import raw_object

__all__ = ('RUN_INDEX_NAME', 'read_runs')

RUN_INDEX_NAME = 'runs-index.json'
"""The memo's name under the prefix (beside `runs/`, so never listed as a run)."""
_FORMAT = 'runs-index-1'
_RUN = TypeAdapter(RunRecord)

_Memo = dict[str, tuple[str, str]]
"""Record key -> (ETag, record JSON)."""


def _decode(body: bytes | None) -> _Memo:
    try:
        data = json.loads(body) if body is not None else {}
        if data.get('format') != _FORMAT:
            return {}
        return {key: (etag, record) for key, (etag, record) in data['records'].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def _encode(memo: _Memo) -> bytes:
    return json.dumps({'format': _FORMAT, 'records': memo}, separators=(',', ':')).encode()


async def read_runs(
    location: S3Location, listed: list[ObjectInfo], load: Callable[[str], Awaitable[RunRecord | None]]
) -> list[RunRecord]:
    """The records of the `listed` run objects: from the memo where its ETag matches, else `load(key)`."""
    memo_object = raw_object(location, location.prefix + RUN_INDEX_NAME)
    body, etag = await memo_object.load_versioned()
    memo = _decode(body)
    fresh: _Memo = {}
    missing = [info for info in listed if memo.get(info.key, ('', ''))[0] != info.etag]
    for info, record in zip(missing, await asyncio.gather(*(load(info.key) for info in missing)), strict=True):
        if record is not None:
            fresh[info.key] = (info.etag, _RUN.dump_json(record).decode())
    current = {
        info.key: fresh.get(info.key) or memo[info.key] for info in listed if info.key in fresh or info.key in memo
    }
    if current != memo:
        new = _encode(current)
        await memo_object.update(lambda _: Change(new, None), expect_missing=etag is None)
    return [_RUN.validate_json(record) for _, record in current.values()]
