"""The `pydantic-graph-s3` command line: the demo, a local S3, and operating the runs stored in a bucket.

One module per responsibility: `app` (the command tree, consoles, shared options, exit codes), `common` (running
work, user errors as one line and an exit code), then the commands: `runs` (list, show, export, import, delete,
prune, recover, stats), `time_travel` (fork, rollback, update-state), `demo`, `package`, `endpoint`
(check-endpoint), and `main`, the entry point.
"""

from __future__ import annotations as _annotations

from .app import ExitCode
from .main import app, main

__all__ = ('app', 'main', 'ExitCode')
