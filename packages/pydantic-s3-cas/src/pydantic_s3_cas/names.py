"""Bucket names and key prefixes, checked before any request: a typo is a clear `ValueError`, not a botocore
regex error later, nor a prefix that shares keys with another.

The rules are S3's for the buckets it creates today:
- general purpose: 3 to 63 characters; lowercase letters, digits, dots and hyphens; starting and ending with a
  letter or digit; no two dots in a row; not an IP address (`192.168.5.4`). Access point and Object Lambda
  aliases (`...-s3alias`, `...--ol-s3`) follow these rules, so they are accepted too.
- directory buckets: `base-name--zone-id--x-s3` (e.g. `logs--usw2-az1--x-s3`), 3 to 63 characters, the base name
  of lowercase letters, digits and hyphens.

S3-compatible stores (MinIO, SeaweedFS, R2, ...) accept these names too. Names only some of them (or S3's legacy
us-east-1 buckets) accept, with capitals or underscores, are refused.
"""

from __future__ import annotations as _annotations

import re

from .errors import quoted

__all__ = ('validate_bucket_name', 'validate_prefix')

_GENERAL_PURPOSE = re.compile(r'[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]')
_DIRECTORY = re.compile(r'[a-z0-9][a-z0-9-]*--[a-z0-9]+(-[a-z0-9]+)*--x-s3')
_IP_ADDRESS = re.compile(r'\d{1,3}(\.\d{1,3}){3}')
_QUOTED_MAX = 70

RULES = (
    '3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit, no "..", '
    'not an IP address; or a directory bucket name-base--zone-id--x-s3'
)


def validate_bucket_name(name: str) -> str:
    """Return `name` if S3 accepts it as a bucket name, else raise `ValueError` saying what the rules are."""
    problem = _problem(name)
    if problem is not None:
        shown = name if len(name) <= _QUOTED_MAX else f'{name[:_QUOTED_MAX]}... ({len(name)} characters)'
        raise ValueError(f'invalid bucket name {shown!r}: {problem}; a bucket name is {RULES}')
    return name


def _problem(name: str) -> str | None:
    if not name:
        return 'it is empty'
    if not 3 <= len(name) <= 63:
        return f'it has {len(name)} characters'
    if _DIRECTORY.fullmatch(name):
        return None
    if not _GENERAL_PURPOSE.fullmatch(name):
        return 'it has a character or an end S3 does not accept'
    if '..' in name:
        return 'it has two dots in a row'
    if _IP_ADDRESS.fullmatch(name):
        return 'it is an IP address'
    return None


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it names a folder (`''`, or ending with `/`), else raise `ValueError`.

    Without the slash, prefix `runs` would share keys with prefix `runs-v2` (`runs-v2abc.json` is run `-v2abc`
    of one and run `abc` of the other), so one deployment would answer and delete the other's objects.
    """
    if not isinstance(prefix, str) or (prefix and not prefix.endswith('/')):
        raise ValueError(
            f'invalid prefix {quoted(prefix)}: a prefix names a folder, so it must be empty or end with "/". '
            'Add the slash if your objects are stored under it; a prefix without one shares keys with other prefixes.'
        )
    return prefix
