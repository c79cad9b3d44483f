"""pydantic-graph's count-down example (`count_down_from_persistence` in its persistence docs).

The only change from the original is the persistence line: `S3StatePersistence.for_run` instead of
`FileStatePersistence`. `handler` serves the graph as an AWS Lambda function (see `GraphWorker`): the Terraform
example deploys it as `pydantic_graph_s3.examples.count_down.handler`.
"""

from __future__ import annotations as _annotations

from dataclasses import dataclass

from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from ..persistence import S3StatePersistence
from ..serverless import GraphWorker

__all__ = ('CountDownState', 'CountDown', 'count_down_graph', 'start_run', 'run_node', 'worker', 'handler')


@dataclass
class CountDownState:
    counter: int


@dataclass
class CountDown(BaseNode[CountDownState, None, int]):
    async def run(self, ctx: GraphRunContext[CountDownState]) -> CountDown | End[int]:
        if ctx.state.counter <= 0:
            return End(ctx.state.counter)
        ctx.state.counter -= 1
        return CountDown()


count_down_graph = Graph(nodes=[CountDown])

# The bucket and prefix come from PYDANTIC_GRAPH_S3_BUCKET / PYDANTIC_GRAPH_S3_PREFIX, read on the first event.
worker = GraphWorker(count_down_graph)
handler = worker.lambda_handler


async def start_run(run_id: str, *, bucket: str, prefix: str = '', counter: int = 5) -> bool:
    """Create the run in S3, ready for `run_node`, as the seed's `main` does; False if it already existed.

    An existing run is left untouched: `Graph.initialize` would append a second start to it.
    """
    persistence: S3StatePersistence[CountDownState, int] = S3StatePersistence.for_run(
        run_id, bucket=bucket, prefix=prefix
    )
    persistence.set_graph_types(count_down_graph)
    return await persistence.initialize_run(CountDownState(counter=counter), CountDown()) is None


async def run_node(run_id: str, *, bucket: str, prefix: str = '') -> CountDown | End[int]:
    """Advance the run by one node with a fresh persistence object, as one serverless invocation would."""
    persistence = S3StatePersistence.for_run(run_id, bucket=bucket, prefix=prefix)
    async with count_down_graph.iter_from_persistence(persistence) as run:
        node_or_end = await run.next()
    assert isinstance(node_or_end, CountDown | End)
    return node_or_end
