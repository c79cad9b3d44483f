"""An agent whose steps are kept in S3, then continued from its latest snapshot by a second store instance.

Runs offline, as it is: `python quickstart.py` starts moto's S3 server on loopback (the `embedded` extra) and runs
the agent on pydantic-ai's `TestModel`, which answers without an LLM. Needs
`pip install pydantic-ai-harness-s3 'pydantic-s3-cas[embedded]'`.
"""

import asyncio
import os

import aioboto3
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel
from pydantic_ai_harness.step_persistence import StepPersistence, continue_run

from pydantic_ai_harness_s3 import ClientSettings, S3StepStore
from pydantic_s3_cas.embedded import embedded_s3

BUCKET = 'quickstart'


def librarian(store: S3StepStore, run_id: str) -> Agent[None, str]:
    """The harness's librarian: `StepPersistence` saves every settled step of its run in `store`."""
    agent = Agent(
        TestModel(),  # with a real model: Agent('openai:gpt-5', ...), and pip install 'pydantic-ai-slim[openai]'
        capabilities=[StepPersistence(store=store, agent_name='code_librarian', run_id=run_id)],
    )

    @agent.tool_plain
    def find_symbol(name: str) -> str:
        """Where a symbol is defined."""
        return f'{name} is defined in pydantic_ai/messages.py'

    return agent


async def main(endpoint_url: str) -> None:
    settings = ClientSettings(endpoint_url=endpoint_url, region_name='us-east-1')
    async with aioboto3.Session().client('s3', endpoint_url=endpoint_url, region_name='us-east-1') as s3:
        await s3.create_bucket(Bucket=BUCKET)

    # Against AWS S3: S3StepStore(bucket='my-bucket', prefix='agent-runs/'), credentials and region from the standard
    # AWS configuration. Here the store points at the embedded server.
    store = S3StepStore(bucket=BUCKET, prefix='agent-runs/', client_settings=settings)
    first = await librarian(store, 'librarian-1').run('Find ThinkingPartDelta and confirm the callable allowance')
    print(f'run librarian-1 answered: {first.output}')
    print(f'its steps cost {store.stats.requests} S3 requests')

    # Another process (a new Lambda, a restarted worker) continues it: a store instance of its own, the same bucket.
    elsewhere = S3StepStore(bucket=BUCKET, prefix='agent-runs/', client_settings=settings)
    snapshot = await elsewhere.latest_snapshot(run_id='librarian-1')
    assert snapshot is not None
    print(f'latest snapshot of librarian-1: {len(snapshot.messages)} messages, {snapshot.state}')
    unresolved = await elsewhere.list_unresolved_tool_effects(run_id='librarian-1')
    print(f'tool calls that may have had their effect without a result: {len(unresolved)}')
    messages = await continue_run(elsewhere, run_id='librarian-1')  # the latest snapshot's messages
    second = await librarian(elsewhere, 'librarian-2').run('And where is it used?', message_history=messages)
    print(f'run librarian-2, continued from it, answered: {second.output} ({len(second.all_messages())} messages)')


if __name__ == '__main__':
    # The embedded server accepts any credentials: set some, so that no AWS configuration is needed.
    os.environ.setdefault('AWS_ACCESS_KEY_ID', 'quickstart')
    os.environ.setdefault('AWS_SECRET_ACCESS_KEY', 'quickstart')
    with embedded_s3() as url:
        asyncio.run(main(url))
