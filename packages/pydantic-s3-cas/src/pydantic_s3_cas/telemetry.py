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
from typing import Any

import logfire_api

__all__ = ('span', 'logger')

logger = logging.getLogger('pydantic_s3_cas')

_logfire = logfire_api.Logfire(otel_scope='pydantic-s3-cas')


@contextmanager
def span(msg_template: str, /, **attributes: Any) -> Iterator[logfire_api.LogfireSpan]:
    """A span named by `msg_template`, with `attributes`.

    With `logfire` installed but not configured, its first span warns that nothing will be recorded; a
    library must not warn about its caller's choice, so that warning is silenced (as pydantic-graph does),
    only while the span is created, since filters are process-wide and the body may await.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='No logs or spans will be created')
        created = _logfire.span(msg_template, **attributes)
    with created as entered:
        yield entered
