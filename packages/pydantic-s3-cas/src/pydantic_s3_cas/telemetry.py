"""Spans and log records, with nothing to install or configure.

Spans go through `logfire_api`, which pydantic-graph already depends on: without the `logfire` package it is a
no-op shim, and with it spans follow whatever `logfire.configure()` set up (Logfire, or any OpenTelemetry
exporter). Log records go to the standard `logging` tree, under `pydantic_s3_cas` unless the owner of an object names
another logger (pydantic-graph-s3 uses `pydantic_graph_s3`), each with a `run_id`.
"""

from __future__ import annotations as _annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import logfire_api

__all__ = ('span', 'logger')

logger = logging.getLogger('pydantic_s3_cas')

_logfire = logfire_api.Logfire(otel_scope='pydantic-s3-cas')


class SpanAttributes(Protocol):
    """What callers of `span` use of the span: attributes set while it is open."""

    def set_attribute(self, key: str, value: Any) -> None: ...


class _Unrecorded:
    """What `span` yields when no span would be recorded: attributes set on it go nowhere."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass


_UNRECORDED = _Unrecorded()


def _recording() -> bool:
    """Whether a span made now could be recorded.

    Without the `logfire` package, `logfire_api` is a no-op shim, whose spans cost nothing. With it, nothing is
    recorded until `logfire.configure()` has run (logfire says so, and warns), yet building each span costs
    tens of microseconds, several times per step: skipped until then. Checked per span, as configuring may come
    at any time; should logfire's internals change, spans are made as before.
    """
    config = getattr(_logfire, '_config', None)
    return config is None or bool(getattr(config, '_initialized', True))


@contextmanager
def span(msg_template: str, /, **attributes: Any) -> Iterator[SpanAttributes]:
    """A span named by `msg_template`, with `attributes`.

    With `logfire` installed but not configured, its first span warns that nothing will be recorded; a
    library must not warn about its caller's choice, so no span is made then (see `_recording`). The warning
    is also silenced (as pydantic-graph does) while a span is created, since filters are process-wide and the
    body may await.
    """
    if not _recording():
        yield _UNRECORDED
        return
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='No logs or spans will be created')
        created = _logfire.span(msg_template, **attributes)
    with created as entered:
        yield entered
