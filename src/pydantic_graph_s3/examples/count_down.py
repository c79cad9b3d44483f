"""pydantic-graph's count-down example (`count_down_from_persistence` in its persistence docs).

The only change from the original is the persistence line: `S3StatePersistence.for_run` instead of
`FileStatePersistence`.
"""

from __future__ import annotations as _annotations

from dataclasses import dataclass

from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from ..persistence import S3StatePersistence

__all__ = ('CountDownState', 'CountDown', 'count_down_graph', 'start_run', 'run_node')


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


async def start_run(run_id: str, *, bucket: str, prefix: str = '', counter: int = 5) -> None:
    """Create the run in S3, ready for `run_node`, as the seed's `main` does."""
    persistence = S3StatePersistence.for_run(run_id, bucket=bucket, prefix=prefix)
    await count_down_graph.initialize(CountDown(), state=CountDownState(counter=counter), persistence=persistence)


async def run_node(run_id: str, *, bucket: str, prefix: str = '') -> CountDown | End[int]:
    """Advance the run by one node with a fresh persistence object, as one serverless invocation would."""
    persistence = S3StatePersistence.for_run(run_id, bucket=bucket, prefix=prefix)
    async with count_down_graph.iter_from_persistence(persistence) as run:
        node_or_end = await run.next()
    assert isinstance(node_or_end, CountDown | End)
    return node_or_end
