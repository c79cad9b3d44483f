"""Serve a Python Lambda handler over stdin/stdout for `run_state_machine.mjs`.

Usage: python lambda_bridge.py module:function

One JSON event per input line, one JSON reply per output line: `{"result": ...}` or, when the handler raises,
`{"error": {"name": ..., "cause": ...}}` named as Step Functions would name the error of a Lambda Task.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
import uuid
from collections.abc import Callable
from typing import Any, TextIO

Handler = Callable[[Any, Any], Any]

# The deadline Lambda would give the handler; the local run does not enforce it.
_TIMEOUT_MILLIS = 60_000


class LocalLambdaContext:
    """The attributes of the Lambda context object that handlers commonly read."""

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name
        self.function_version = '$LATEST'
        self.invoked_function_arn = f'arn:aws:lambda:us-east-1:123456789012:function:{function_name}'
        self.memory_limit_in_mb = 512
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f'/aws/lambda/{function_name}'
        self.log_stream_name = 'local'

    def get_remaining_time_in_millis(self) -> int:
        return _TIMEOUT_MILLIS


def load_handler(spec: str) -> Handler:
    module_name, sep, function_name = spec.partition(':')
    if not sep or not module_name or not function_name:
        raise SystemExit(f'handler must be given as module:function, not {spec!r}')
    handler: Handler = getattr(importlib.import_module(module_name), function_name)
    return handler


def error_reply(exc: BaseException) -> dict[str, Any]:
    # A handler's exception reaches Step Functions named by its type; `states_error` lets a test stand in for
    # errors that the Lambda service itself raises before the function runs (Lambda.TooManyRequestsException).
    name = getattr(exc, 'states_error', None) or type(exc).__name__
    cause = {
        'errorMessage': str(exc),
        'errorType': type(exc).__name__,
        'stackTrace': traceback.format_exception(exc),
    }
    return {'error': {'name': name, 'cause': json.dumps(cause)}}


def serve(handler: Handler, requests: TextIO, replies: TextIO) -> None:
    for line in requests:
        if not line.strip():
            continue
        event = json.loads(line)
        try:
            reply: dict[str, Any] = {'result': handler(event, LocalLambdaContext('pydantic-graph-s3-local'))}
        except Exception as exc:
            reply = error_reply(exc)
        replies.write(json.dumps(reply) + '\n')
        replies.flush()


def main() -> None:
    # The protocol owns the real stdout; anything the handler prints (even from C code) goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), 'w', encoding='utf-8')
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.path.insert(0, os.getcwd())
    serve(load_handler(sys.argv[1]), sys.stdin, replies)


if __name__ == '__main__':
    main()
