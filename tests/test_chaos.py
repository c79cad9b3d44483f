"""The chaos benchmark, scaled down: real worker processes, SIGKILLed and restarted, through injected S3 faults.

It runs `python -m benchmarks.chaos` itself, so the script that prints the full-size figures is the one tested.
The work is bounded (runs x steps); the time it takes is not, since the machine may be busy: the driver gives up
only when no node ran for minutes, and the timeout here is a safety net for a hung driver.
"""

from __future__ import annotations as _annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pydantic_s3_cas.child_process import dies_with_parent

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(1800)
def test_no_run_is_lost_or_forked_under_kills_and_faults() -> None:
    runs, steps = 4, 6
    command = [
        *(sys.executable, '-m', 'benchmarks.chaos', '--json'),
        *('--runs', str(runs), '--steps', str(steps), '--workers', '3'),
        # Each run's step 1 dies mid-node and step 2 after its node, before its snapshot, on first execution.
        *('--die-every', '6', '--kill-every', '5', '--fault-rate', '0.05', '--reclaim-after', '1', '--seed', '3'),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, **dies_with_parent())
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (figures, done.stderr[-2000:])

    assert figures['failures'] == []
    assert (figures['runs_finished'], figures['snapshots_lost'], figures['forks']) == (runs, 0, 0)
    assert figures['steps'] == runs * steps
    deaths = figures['kills'].get('mid-node', 0), figures['kills'].get('before-snapshot', 0)
    assert min(deaths) >= 1, figures['kills']
    # Every death inside a step left a claim that had to be reclaimed, and a node re-ran only when reclaimed;
    # each death in the middle of a node is an execution that did not count as a step.
    assert figures['reclaims'] >= sum(deaths)
    assert deaths[0] <= figures['node_executions'] - figures['steps'] <= figures['reclaims']
    assert figures['faults'] > 0


@pytest.mark.timeout(240)
def test_a_503_burst_on_any_write_never_strands_a_run_under_default_settings() -> None:
    # One run per kind of write (start, claim+running, success+successor), each meeting a burst of 503s that
    # exhausts the default RetryPolicy; the worker is configured only as the Terraform module configures it.
    command = [
        *(sys.executable, '-m', 'benchmarks.chaos', 'bursts', '--json'),
        *('--runs-per-write', '1', '--steps', '2', '--reclaim-after', '1', '--max-invocations', '100'),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=230)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (figures, done.stderr[-2000:])

    assert figures['failures'] == []
    assert (figures['runs_finished'], figures['forks'], figures['manual_steps']) == (3, 0, 0)
    # Each burst made an invocation give up, and the claim the success burst stranded was taken over.
    assert sorted(figures['by_write']) == ['claim+running', 'start', 'success+successor']
    assert min(figures['by_write'].values()) >= 1
    assert figures['reclaims'] >= 1
    assert figures['faults'] == 3 * 12
