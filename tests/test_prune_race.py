"""A prune racing an import and a fork, with the processes SIGKILLed at their storage calls: no run is lost.

Each round, a creator process imports a file as a new run and forks a run at once, and stops before sending each
new head, once its segments are written (see `tests/prune_race_worker.py`); a pruner process prunes every ended
run then, and after it the creator goes on. Both are killed at a different S3 request each round, before it is
sent or after its answer. Foreign objects (keys with a `~` that are no segment's, another prefix's run) sit beside
the runs throughout. After every round, every run with a head must read whole, every creation that reported
success must exist, and every foreign object must still be there.
"""

from __future__ import annotations as _annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from pydantic_graph_s3 import RunStore
from pydantic_s3_cas.child_process import popen_dying_with_parent

from .conftest import S3Bucket
from .test_cleanup import FOREIGN, put_foreign, readable, segmented_run, waiting_run
from .test_long_runs import PAD, Pad, PadState, keys, pad_graph

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
# (kill at request n, before it is sent or after its answer; 0: not killed) for the creator and the pruner.
CREATOR_KILLS = [
    (0, 'before'),
    (2, 'before'),
    (4, 'after'),
    (6, 'before'),
    (9, 'after'),
    (12, 'before'),
    (0, 'before'),
    (14, 'after'),
]
PRUNER_KILLS = [
    (0, 'before'),
    (3, 'after'),
    (0, 'before'),
    (5, 'before'),
    (7, 'after'),
    (2, 'before'),
    (9, 'before'),
    (0, 'before'),
]
SAFETY_NET_SECONDS = 300


@pytest.mark.timeout(1200)
async def test_a_prune_racing_an_import_and_a_fork_loses_no_run(s3: S3Bucket, tmp_path: Path) -> None:
    store = RunStore(s3.bucket, 'p/', **s3.options())
    await put_foreign(s3)
    other = await segmented_run(s3, 'r', prefix='p/q~/')
    # The source of every fork and import: a run with sealed history whose last snapshot waits (never pruned).
    base_snapshots = await waiting_run(s3, 'base')
    await store.export_run('base', tmp_path / 'base.json')
    fork_at = (await store.history('base')).snapshots[6].id

    env = {
        **os.environ,
        'AWS_ACCESS_KEY_ID': s3.endpoint.access_key,
        'AWS_SECRET_ACCESS_KEY': s3.endpoint.secret_key,
        'AWS_DEFAULT_REGION': s3.endpoint.region,
    }
    worker = [sys.executable, '-m', 'tests.prune_race_worker', s3.endpoint.url, s3.bucket]
    created: dict[str, int] = {}
    kills = raced = 0
    for round_number, (creator_kill, pruner_kill) in enumerate(zip(CREATOR_KILLS, PRUNER_KILLS, strict=True)):
        folder = tmp_path / f'round-{round_number}'
        folder.mkdir()
        # Something for the prune to delete meanwhile: an ended run with sealed history.
        await pad_graph.run(
            Pad(), state=PadState(6, 'x' * PAD), persistence=s3.persistence(f'old-{round_number}', prefix='p/')
        )
        import_id, fork_id = f'imp-{round_number}', f'fork-{round_number}'
        creator = popen_dying_with_parent(
            [*worker, str(folder), 'create', str(tmp_path / 'base.json'), import_id, 'base', fork_at, fork_id]
            + [str(n) for n in creator_kill],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        paused = [folder / f'at-head-{import_id}', folder / f'at-head-{fork_id}']
        with anyio.fail_after(SAFETY_NET_SECONDS):
            while creator.poll() is None and not all(p.exists() for p in paused):  # noqa: ASYNC110 (other process)
                await anyio.sleep(0.02)
        both_paused = creator.poll() is None
        pruner = popen_dying_with_parent(
            [*worker, str(folder), 'prune', *(str(n) for n in pruner_kill)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, pruner_errors = await anyio.to_thread.run_sync(pruner.communicate, None, SAFETY_NET_SECONDS)
        raced += both_paused and pruner.returncode == 0
        (folder / 'go').touch()
        _, creator_errors = await anyio.to_thread.run_sync(creator.communicate, None, SAFETY_NET_SECONDS)
        for process, errors in (
            (creator, creator_errors),
            (pruner, pruner_errors),
        ):
            # A process that made fewer requests than its kill point finished its work.
            assert process.returncode in (0, -signal.SIGKILL), errors.decode()[-3000:]
            kills += process.returncode == -signal.SIGKILL
        created.update({run_id: base_snapshots for run_id in [import_id] if (folder / f'ok-{run_id}').exists()})
        created.update({run_id: 7 for run_id in [fork_id] if (folder / f'ok-{run_id}').exists()})

        # Every run with a head reads whole; every creation that reported success is there, whole.
        heads = [summary.run_id async for summary in store.list_runs(decode=False)]
        lost = []
        for run_id in heads:
            try:
                await readable(s3, run_id, 'p/')
            except Exception as e:
                lost.append(f'{run_id}: {type(e).__name__}: {e}')
        for run_id, snapshots in created.items():
            if run_id not in heads or await readable(s3, run_id, 'p/') != snapshots:
                lost.append(f'{run_id}: reported created, then missing or incomplete')
        assert lost == [], f'round {round_number}'
        assert set(FOREIGN) | set(other) <= set(await keys(s3, ''))
        assert await readable(s3, 'r', 'p/q~/') == 11
    print(
        f'{len(CREATOR_KILLS)} rounds: {kills} processes killed, {raced} prunes run whole while both creations '
        f'waited at their heads, {len(created)} runs created and reported, 0 lost'
    )
    # The race was run, not just the kills: in the round without kills (at least), both creations waited at their
    # heads through a whole prune, then were created.
    assert raced >= 1 and kills >= 8
    assert {'imp-0', 'fork-0'} <= set(created)
