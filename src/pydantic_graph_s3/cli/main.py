"""`main`, the `pydantic-graph-s3` entry point: every command module registered on `app`, then run."""

from __future__ import annotations as _annotations

import logging

from . import demo, endpoint, local, package, runs, time_travel
from .app import app

__all__ = ('app', 'main')

COMMAND_MODULES = (demo, endpoint, local, package, runs, time_travel)
"""Imported for their commands, which register themselves on `app`."""


def main() -> None:
    # The error line says what the storage layer's warning would: one message, not two.
    for name in ('pydantic_graph_s3', 'pydantic_s3_cas'):
        logging.getLogger(name).addHandler(logging.NullHandler())
    app()
