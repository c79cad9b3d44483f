"""Error messages that never carry state or node field values, and never quote unbounded input.

The README promises that no log record, exception message or `StepResult.error` contains a value of a run's
state or nodes: they end up in Lambda logs and Step Functions histories, which are read far more widely than
the runs themselves. pydantic's own `str(ValidationError)` shows each `input_value`, and the message of a
`value_error` is whatever a user's validator put there (often the value), so validation errors are described
here from their location and error type instead.
"""

from __future__ import annotations as _annotations

from typing import Any, get_args

import pydantic
from pydantic_core.core_schema import ErrorType

from pydantic_s3_cas import shortened
from pydantic_s3_cas.errors import QUOTE_LIMIT

__all__ = ('describe_validation_error', 'listed', 'schema_field_names')

# Built-in pydantic errors whose message interpolates (part of) the input, or a user's own text.
_MESSAGE_MAY_QUOTE_INPUT = frozenset(
    {'value_error', 'assertion_error', 'union_tag_invalid', 'get_attribute_error', 'uuid_parsing', 'url_parsing'}
)
_SAFE_MESSAGES = frozenset(get_args(ErrorType)) - _MESSAGE_MAY_QUOTE_INPUT

_MAX_ERRORS = 3
_MAX_LOCATION_PART = 40


def describe_validation_error(
    error: pydantic.ValidationError, *, own_schema: bool = False, field_names: frozenset[str] | None = None
) -> str:
    """`where: what` for the first few errors, without input values or messages that may quote them.

    `own_schema`: the schema is this library's (a request envelope), whose messages quote only identifiers such
    as an action or a run id, never state: they are kept, bounded. Otherwise (a user's state or node types) a
    message that may quote the input is replaced by the error type. With `field_names` (see
    `schema_field_names`), a location part that is not one of them (a dict key of the data, an unknown key) is
    shown as `<...>`: keys are data too.
    """
    items = error.errors(include_url=False, include_input=False, include_context=False)
    parts = [
        _describe_item(item['loc'], item['type'], item['msg'], own_schema, field_names) for item in items[:_MAX_ERRORS]
    ]
    if len(items) > _MAX_ERRORS:
        parts.append(f'and {len(items) - _MAX_ERRORS} more error(s)')
    return '; '.join(parts)


def listed(names: list[str], limit: int = 5) -> str:
    """`a, b, c` of the first `limit` names (each bounded), saying how many more there are."""
    shown = [shortened(name) for name in names[:limit]]
    more = f' and {len(names) - limit} more' if len(names) > limit else ''
    return ', '.join(shown) + more


_FIELD_HOLDERS = frozenset({'model-fields', 'typed-dict', 'dataclass-args'})


def schema_field_names(schema: Any) -> frozenset[str]:
    """Every field name (and string alias) declared anywhere in a pydantic core schema, and every tag of a
    tagged union (a node id, a snapshot kind, which pydantic puts in the location too): the location parts that
    are the schema's own words, not the data's."""
    names: set[str] = set()
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            kind, fields = node.get('type'), node.get('fields')
            if isinstance(kind, str) and kind in _FIELD_HOLDERS:
                declared = fields.items() if isinstance(fields, dict) else [(f.get('name'), f) for f in fields or ()]
                for name, field in declared:
                    names.update(n for n in (name, field.get('validation_alias')) if isinstance(n, str))
            elif kind == 'tagged-union' and isinstance(choices := node.get('choices'), dict):
                names.update(tag for tag in choices if isinstance(tag, str))
            pending.extend(node.values())
        elif isinstance(node, list | tuple):
            pending.extend(node)
    return frozenset(names)


def _describe_item(
    loc: tuple[int | str, ...], error_type: str, message: str, own_schema: bool, field_names: frozenset[str] | None
) -> str:
    where = '.'.join(_location_part(part, field_names) for part in loc)
    if own_schema or error_type in _SAFE_MESSAGES:
        what = shortened(message, 2 * QUOTE_LIMIT)
    else:
        what = f'the value was refused ({error_type}; value not shown)'
    return f'{where}: {what}' if where else what


def _location_part(part: int | str, field_names: frozenset[str] | None) -> str:
    # Dict keys are part of the location, and are data: not shown where the schema's names are known, else bounded
    # like any other quoted input.
    if field_names is not None and isinstance(part, str) and part not in field_names:
        return '<...>'
    return shortened(str(part), _MAX_LOCATION_PART)
