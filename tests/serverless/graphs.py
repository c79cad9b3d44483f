"""Lambda handlers of real GraphWorkers for the Step Functions tests, configured from the environment as deployed."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_graph import BaseNode, End, GraphRunContext
from pydantic_graph.graph import Graph

from pydantic_graph_s3.examples.count_down import CountDownState
from pydantic_graph_s3.serverless import GraphWorker


@dataclass
class Explode(BaseNode[CountDownState, None, int]):
    """Counts down, and raises instead of reaching zero."""

    async def run(self, ctx: GraphRunContext[CountDownState]) -> Explode | End[int]:
        if ctx.state.counter <= 1:
            raise ValueError(f'exploded at {ctx.state.counter}')
        ctx.state.counter -= 1
        return Explode()


explode_graph = Graph(nodes=[Explode])
explode_handler = GraphWorker(explode_graph).lambda_handler
