"""Bucket names, checked before any request: a typo is a clear `ValueError`, not a botocore regex error later.

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

__all__ = ('validate_bucket_name',)

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
