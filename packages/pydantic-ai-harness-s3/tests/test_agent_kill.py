"""End to end: a pydantic-ai Agent persisting to S3 is SIGKILLed mid-tool-call, then continued in a fresh process."""

from __future__ import annotations as _annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Bucket, wait_for_marker

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name('agent_worker.py')


def worker(s3: Bucket, mode: str, run_id: str, markers: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        'AWS_ACCESS_KEY_ID': s3.endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': s3.endpoint.secret_key,
        'AWS_DEFAULT_REGION': s3.endpoint.region,
    }
    command = [sys.executable, str(WORKER), mode, s3.endpoint.url, s3.bucket, run_id, str(markers)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_agent_killed_mid_tool_call_continues_from_latest_snapshot(moto: Bucket, tmp_path: Path) -> None:
    first = worker(moto, 'start', 'run-1', tmp_path)
    await wait_for_marker(tmp_path / 'in-slow-write', first, 'its second tool call')
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL

    store = moto.step_store()
    kinds = [e.kind for e in await store.list_events(run_id='run-1')]
    assert kinds[0] == 'run_started' and kinds[-1] == 'tool_call_started' and 'run_completed' not in kinds
    unresolved = await store.list_unresolved_tool_effects(run_id='run-1')
    assert [r.tool_call_id for r in unresolved] == ['call-write']  # in flight when killed
    latest = await store.latest_snapshot(run_id='run-1')
    assert latest is not None and latest.state == 'complete'  # after the settled `lookup` call
    frontier = await store.latest_snapshot(run_id='run-1', include_interrupted=True)
    assert frontier is not None and frontier.state == 'interrupted'  # the model's `slow_write` call, captured

    (tmp_path / 'in-slow-write').unlink()
    second = worker(moto, 'continue', 'run-1', tmp_path)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert 'unresolved=call-write' in stdout
    assert 'output=done: wrote answer=42' in stdout
    assert (tmp_path / 'in-slow-write').exists()  # the interrupted tool call ran again, in the new process
    continued = await store.list_events(run_id='run-1-continued')
    assert continued[-1].kind == 'run_completed'
    run = await store.get_run(run_id='run-1-continued')
    assert run is not None and run.registration_id is not None
