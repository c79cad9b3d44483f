"""The fleet benchmark, scaled down: `python -m benchmarks.fleet`, the script that prints the figures.

Asserts what does not depend on the machine's speed: every step ran exactly once, a step of the dealt-out fleet
costs 1 GET + 2 PUT (counted by a botocore hook on each worker's own client), as does the bare mix it is compared
with, and workers that step every run (`--shared`) collide without losing or repeating a step.
"""

from __future__ import annotations as _annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pydantic_s3_cas.child_process import dies_with_parent

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_scaled_down_fleet_costs_three_requests_per_step() -> None:
    runs, steps = 4, 3
    command = [
        *(sys.executable, '-m', 'benchmarks.fleet', '--json', '--shared'),
        *('--runs', str(runs), '--steps', str(steps), '--workers', '1', '2', '--servers', 'moto'),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=880, **dies_with_parent())
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r['workers'], r['shared']) for r in rows] == [(1, False), (1, True), (2, False), (2, True)]
    for row in rows:
        assert row['steps'] == row['bare_steps'] == runs * steps
        assert row['bare_requests_per_step'] == 3
        assert row['put_body_bytes'] > 0
    for row in (r for r in rows if not r['shared']):
        assert (row['gets_per_step'], row['puts_per_step']) == (1, 2)
        assert (row['conflicts_per_step'], row['busy_per_step']) == (0, 0)
    for row in (r for r in rows if r['shared']):
        # A collision costs requests (a refused claim, a read that finds the step held), never a step.
        assert row['requests_per_step'] >= 3
