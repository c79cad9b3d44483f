"""Lambda events in, answers out: direct and Step Functions requests, EventBridge events and SQS batches.

Each request is carried out by a `Dispatch` (the worker's), so this module knows the events' shapes and what an
answer means to the service that sent them (a raised error is retried, an SQS record named in
`batchItemFailures` is delivered again), and nothing about graphs.
"""

from __future__ import annotations as _annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic_s3_cas import S3PersistenceError, quoted, shortened

from ._messages import listed
from .wire import AdvanceRequest, InvalidEventError, Request, RunNotFoundError, StepResult, parse_request

__all__ = ('Dispatch', 'handle_event')

# The worker's logger: its SQS records are the worker's own story.
logger = logging.getLogger('pydantic_graph_s3.serverless')

Dispatch = Callable[[Request, float | None], Awaitable[StepResult]]
"""Carries out one request by a deadline (`GraphWorker.dispatch`)."""


async def handle_event(event: Mapping[str, Any], deadline: float | None, dispatch: Dispatch) -> dict[str, Any]:
    """Answer one Lambda event.

    - A direct or Step Functions event is a request (`StartRequest`, `AdvanceRequest`); the answer is the
      `StepResult` as a dict. An invalid request raises `InvalidEventError` before anything is read or
      written; a storage error raises too, so that Lambda and Step Functions retry it.
    - An EventBridge event carries the request in `detail`, and is answered the same way.
    - An SQS event is a batch of requests, one per record body, run concurrently; the answer is
      `{"batchItemFailures": [...]}` naming the records to deliver again (see `_sqs_record`).
    """
    if not isinstance(event, Mapping):
        raise InvalidEventError(f'invalid event: expected a JSON object, got {type(event).__name__}')
    if 'Records' in event:
        if len(event) > 1:
            others = listed(sorted(str(key) for key in event if key != 'Records'))
            raise InvalidEventError(f'invalid event: an SQS event (Records) that also has {others}: ambiguous')
        return {'batchItemFailures': await _sqs_batch(event['Records'], deadline, dispatch)}
    if 'detail-type' in event or 'detail' in event:
        if not ('detail-type' in event and 'detail' in event) or 'action' in event:
            raise InvalidEventError(
                'invalid event: an EventBridge event needs both detail-type and detail, and carries the '
                'request in detail only (not action at the top level): ambiguous'
            )
        body = event['detail']
    else:
        body = event
    result = await dispatch(parse_request(body), deadline)
    return result.model_dump(mode='json')


async def _sqs_batch(records: object, deadline: float | None, dispatch: Dispatch) -> list[dict[str, str]]:
    if not isinstance(records, list) or not all(_is_sqs_record(r) for r in records):
        raise InvalidEventError('invalid event: only SQS records are supported (eventSource "aws:sqs")')
    done = await asyncio.gather(*(_sqs_record(record, deadline, dispatch) for record in records))
    return [{'itemIdentifier': r['messageId']} for r, ok in zip(records, done, strict=True) if not ok]


async def _sqs_record(record: Mapping[str, Any], deadline: float | None, dispatch: Dispatch) -> bool:
    """Whether SQS may delete the record.

    It may not when the record failed (an invalid body, so it ends in the dead-letter queue; a storage
    error, so it is retried) or when its run is still `running` when time ran out: SQS delivering it
    again is what keeps an SQS-driven run going. `busy`, `done` and `failed` records are finished with:
    another worker has the run, or nothing more will happen to it.
    """
    try:
        request = parse_request(json.loads(record['body']))
        result = await dispatch(request, deadline)
    except Exception as e:
        # No traceback: pydantic errors in it show input values, and a node's exception may quote state.
        logger.error('SQS message %s failed: %s', quoted(record['messageId']), _safe_description(e))
        return False
    if isinstance(request, AdvanceRequest) and result.status == 'running':
        message = 'run %s is still running after %d steps: message %s goes back to the queue'
        logger.info(message, result.run_id, result.steps, record['messageId'])
        return False
    return True


def _is_sqs_record(record: object) -> bool:
    return isinstance(record, Mapping) and record.get('eventSource') == 'aws:sqs' and 'messageId' in record


def _safe_description(error: Exception) -> str:
    """What to log about a failed SQS record: our own errors' messages say which object or field, never a value;
    any other exception (a node's, a library's) is named by type only."""
    if isinstance(error, InvalidEventError | S3PersistenceError | RunNotFoundError | json.JSONDecodeError):
        return f'{type(error).__name__}: {shortened(str(error), 1000)}'
    return f'{type(error).__name__} (message not logged: it may quote state values)'
