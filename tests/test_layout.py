"""The stored format (`layout`) on its own: segment keys, and every JSON layout of a snapshot list and element."""

from __future__ import annotations as _annotations

import pytest

from pydantic_graph_s3.layout import parse_segment_key, segment_key


@pytest.mark.parametrize(
    ('key', 'parsed'),
    [
        ('runs/a~0123456789ab~00000001.json', ('a', '0123456789ab', 1)),
        (f'runs/r.1=x_-~{"f" * 32}~00000042.json', ('r.1=x_-', 'f' * 32, 42)),
        ('runs/a~0123456789ab~123456789.json', ('a', '0123456789ab', 123456789)),
        # Anything else under the prefix is not history this library wrote.
        ('runs/notes.txt~', None),
        ('runs/backup~2024.tar', None),
        ('runs/x~y/z.json', None),
        ('runs/p/q~0123456789ab~00000001.json', None),
        ('runs/a~0123456789ab~00000001.json.bak', None),
        ('runs/a~0123456789AB~00000001.json', None),
        ('runs/a~0123456789a~00000001.json', None),
        ('runs/a~0123456789ab~0000001.json', None),
        ('runs/a~0123456789ab~00000000.json', None),
        ('runs/a~0123456789ab~023456789.json', None),
        ('runs/..~0123456789ab~00000001.json', None),
        ('runs/~0123456789ab~00000001.json', None),
        ('runs/a~b~0123456789ab~00000001.json', None),
        ('other/a~0123456789ab~00000001.json', None),
        ('runs/a.json', None),
    ],
)
def test_parse_segment_key_recognises_exactly_the_keys_segment_key_writes(
    key: str, parsed: tuple[str, str, int] | None
) -> None:
    assert parse_segment_key('runs/', key) == parsed
    if parsed is not None:
        run_id, segment_id, seq = parsed
        assert segment_key(f'runs/{run_id}.json', segment_id, seq) == key


def test_parse_segment_key_at_the_bucket_root() -> None:
    assert parse_segment_key('', 'a~0123456789ab~00000001.json') == ('a', '0123456789ab', 1)
    assert parse_segment_key('', 'runs/a~0123456789ab~00000001.json') is None
