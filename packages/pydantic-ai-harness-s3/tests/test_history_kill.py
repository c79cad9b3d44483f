"""A message-once save SIGKILLed between its objects and its head write; another process continues the run."""

from __future__ import annotations as _annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Bucket, wait_for_marker
from scripts import conversation_snapshot

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name('history_worker.py')


def worker(s3: Bucket, markers: Path, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        'AWS_ACCESS_KEY_ID': s3.endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': s3.endpoint.secret_key,
        'AWS_DEFAULT_REGION': s3.endpoint.region,
    }
    command = [sys.executable, str(WORKER), args[0], s3.endpoint.url, s3.bucket, 'r', str(markers), *args[1:]]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize('killed_after', ['chunk', 'snapshot'])
async def test_a_save_killed_before_its_head_write_leaves_the_run_continuable(
    s3: Bucket, tmp_path: Path, killed_after: str
) -> None:
    """Steps 1-24 saved (chunks merged on the way), step 25 killed after creating its `killed_after` object: a
    fresh process reads step 24 exactly as saved, and saves 25-40 on top; a third reads 40 as saved."""
    first = worker(s3, tmp_path, 'save', '1', '25', killed_after)
    await wait_for_marker(tmp_path / 'hanging', first, 'the kill point')
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert await s3.step_store().latest_snapshot(run_id='r') == conversation_snapshot('r', 24)

    second = worker(s3, tmp_path, 'continue', '0', '40')
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert 'continued from step 24' in stdout
    reader = s3.step_store()
    assert await reader.latest_snapshot(run_id='r') == conversation_snapshot('r', 40)
    snapshots = await reader.list_snapshots(run_id='r')
    assert [s.step_index for s in snapshots] == list(range(1, 41))
    assert snapshots == [conversation_snapshot('r', step) for step in range(1, 41)]
