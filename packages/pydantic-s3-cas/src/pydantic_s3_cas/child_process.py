"""Child processes that die with their parent: servers and workers must never outlive whoever started them.

A server started by a test, a benchmark or the demo is stopped by the `finally` that started it, but a parent
that is SIGKILLed, or killed by a timeout before its `finally` runs, would leave it running, reparented to PID 1.
On Linux the child asks the kernel for SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`), set between
fork and exec, so no window exists where the parent could die unnoticed. Elsewhere the guarantee is only the
caller's `finally`.

The kernel's "parent" is the thread that forked the child: start children from a thread that outlives them (the
main thread, as tests and benchmarks do), not from a short-lived worker thread.
"""

from __future__ import annotations as _annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

__all__ = ('dies_with_parent', 'popen_dying_with_parent')

_PR_SET_PDEATHSIG = 1


def dies_with_parent() -> dict[str, Any]:
    """Keyword arguments for `subprocess.Popen`/`run` (and `anyio.open_process`) that tie the child to this process.

    Returns `{}` where the platform has no parent-death signal.
    """
    if not sys.platform.startswith('linux'):
        return {}
    return {'preexec_fn': _parent_death_signal(os.getpid())}


def popen_dying_with_parent(args: list[str], **options: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen(args, **options)`, killed by the kernel if this process dies first."""
    return subprocess.Popen(args, **options, **dies_with_parent())


def _parent_death_signal(parent: int) -> Callable[[], None]:
    # Loaded in the parent: the child, between fork and exec, should only make the one call.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def ask_for_sigkill_when_orphaned() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)  # without the guarantee, do not start at all
        if os.getppid() != parent:  # the parent died before prctl: the signal will never come
            os._exit(1)

    return ask_for_sigkill_when_orphaned
