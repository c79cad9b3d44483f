"""The long-run benchmark, scaled down: `python -m benchmarks.long_runs --quick`, the script that prints the figures.

Asserts the issue's targets that do not depend on the machine's speed: requests per step, and bytes per step
against the size of the state; and that the single-object layout it compares with does grow.
"""

from __future__ import annotations as _annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_quick_long_run_benchmark_meets_the_byte_and_request_targets() -> None:
    command = [sys.executable, '-m', 'benchmarks.long_runs', '--quick', '--json']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    at = {(r['scenario'].split(',')[0], r['layout'], r['step']): r for r in rows}
    state_kb = 60 * 2048 / 1024  # the state at step 60: 2 KB per step
    for mode, requests in (('in-process', 3), ('fresh', 5)):
        last = at[(mode, 'segmented', 60)]
        assert at[(mode, 'segmented', -60)]['requests'] <= requests
        assert last['kb_up'] <= 8 * state_kb + 64
        assert last['kb_down'] <= 4 * state_kb + 64
        # Today's layout moves the whole history: far more than the state, and growing with the run.
        assert at[(mode, 'single', 60)]['kb_up'] > 4 * last['kb_up']
