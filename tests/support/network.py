"""Whether the package index is reachable: the packaging tests and `./dev test`'s checkov download from it.

Without it they are skipped with this module's reason instead of failing. The index is pip's (`PIP_INDEX_URL`,
else uv's `UV_DEFAULT_INDEX` / `UV_INDEX_URL`, else PyPI); a `file://` index counts when its folder exists.

    python -m tests.support.network    # exit 0 when reachable, else print why and exit 1
"""

from __future__ import annotations as _annotations

import os
import sys
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path

__all__ = ('package_index', 'package_index_unreachable')

PYPI = 'https://pypi.org/simple/'


def package_index() -> str:
    for variable in ('PIP_INDEX_URL', 'UV_DEFAULT_INDEX', 'UV_INDEX_URL'):
        if os.environ.get(variable):
            return os.environ[variable]
    return PYPI


@cache
def package_index_unreachable(timeout: float = 10.0) -> str | None:
    """None when the index answers, else why not (a reason to show with the skip)."""
    index = package_index()
    if index.startswith('file://'):
        return None if Path(index.removeprefix('file://')).is_dir() else f'package index {index} does not exist'
    try:
        with urllib.request.urlopen(urllib.request.Request(index, method='HEAD'), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: reachable, whatever it thinks of a HEAD
    except (OSError, ValueError) as e:
        return f'package index {index} unreachable ({e})'


if __name__ == '__main__':
    reason = package_index_unreachable()
    if reason is not None:
        print(reason)
    sys.exit(reason is not None)
