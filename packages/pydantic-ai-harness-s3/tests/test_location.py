"""What both stores share (`_location`): names checked before any request, keys that stay one level, `aclose`."""

from __future__ import annotations as _annotations

import pytest
from conftest import Bucket
from pydantic_ai_harness.memory import MemoryOperation
from pydantic_ai_harness.step_persistence import RunRecord, ToolEffectRecord
from scripts import event, snapshot

from pydantic_ai_harness_s3 import S3MemoryStore, S3StepStore
from pydantic_ai_harness_s3._location import key_part

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize('store', [S3StepStore, S3MemoryStore])
@pytest.mark.parametrize('bucket', ['My_Bucket', '', 'ab', 'a..b', '192.168.5.4', 'x' * 64])
def test_bucket_names_are_checked_at_construction(store: type[S3StepStore | S3MemoryStore], bucket: str) -> None:
    """Refused as the 1.x side refuses them, before any request (there is no endpoint to send one to)."""
    with pytest.raises(ValueError, match='invalid bucket name'):
        store(bucket=bucket)
    store(bucket='my-bucket', prefix='agents/')


@pytest.mark.parametrize(
    ('value', 'encoded'),
    [
        ('.', '%2E'),
        ('..', '%2E%2E'),
        ('...', '...'),
        ('a.b', 'a.b'),
        ('run~1', 'run~1'),
        ('a/../b', 'a%2F..%2Fb'),
        ('%2E', '%252E'),
        ('späte Antwort', 'sp%C3%A4te%20Antwort'),
    ],
)
def test_key_parts_are_one_level_and_unchanged_for_every_id_but_dots(value: str, encoded: str) -> None:
    """Only `.` and `..` are encoded differently from before, and `%` is always encoded, so no two ids meet."""
    assert key_part(value, what='run id') == encoded


@pytest.mark.parametrize('run_id', ['.', '..'])
async def test_dot_run_ids_are_kept_under_a_level_of_their_own(s3: Bucket, run_id: str) -> None:
    """SeaweedFS refuses `steps/./` and `steps/../`, and an HTTP layer that normalises paths writes elsewhere."""
    store = s3.step_store()
    await store.register_run(RunRecord(run_id=run_id, registration_id='reg'))
    await store.append_event(event(run_id, 0, key='0:0:model_request_started:'))
    await store.save_snapshot(snapshot(run_id, 2, key='0:2:complete'))
    await store.record_tool_effect(
        ToolEffectRecord(tool_call_id=run_id, tool_name='t', run_id=run_id, status='started')
    )
    memory = s3.memory_store()
    op = MemoryOperation(id=run_id, fingerprint='fp')
    written = await memory.write('notes.md', 'x', expected_version=None, operation=op)

    keys = await s3.keys()
    assert keys and not [key for key in keys if {'.', '..'} & set(key.split('/'))]
    reader = s3.step_store()
    assert (await reader.get_run(run_id=run_id)) is not None
    assert [r.run_id for r in await reader.list_runs()] == [run_id]
    assert len(await reader.list_events(run_id=run_id)) == 1
    latest = await reader.latest_snapshot(run_id=run_id)
    assert latest is not None and latest.idempotency_key == '0:2:complete'
    assert [e.tool_call_id for e in await reader.list_unresolved_tool_effects(run_id=run_id)] == [run_id]
    answered = await s3.memory_store().get_operation(op)
    assert answered is not None and answered.version == written.version


async def test_aclose_leaves_the_shared_client_to_the_other_stores_of_the_loop(s3: Bucket) -> None:
    """`aclose` (and `async with`) on either store: the loop's shared client serves the other stores still."""
    memory = s3.memory_store()
    steps = s3.step_store()
    await memory.write('a.md', 'x', expected_version=None)
    async with s3.memory_store() as closing:
        await closing.read('a.md', max_chars=10)
    await steps.aclose()
    assert await memory.location.s3() is await steps.location.s3()
    stored = await memory.read('a.md', max_chars=10)
    assert stored is not None and stored.content == 'x'
    assert await steps.get_run(run_id='missing') is None


async def test_aclose_leaves_a_given_client_open(s3: Bucket) -> None:
    store = s3.memory_store(client=s3.raw)
    await store.write('a.md', 'x', expected_version=None)
    await store.aclose()
    await s3.raw.head_bucket(Bucket=s3.bucket)  # still usable: the caller owns it
    assert (await store.read('a.md', max_chars=10)) is not None
