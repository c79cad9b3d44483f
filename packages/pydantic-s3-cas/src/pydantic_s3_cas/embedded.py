"""An embedded local S3: moto's server in a subprocess on 127.0.0.1, for the demo, the tests and the benchmark.

moto checks `If-Match`/`If-None-Match` and then stores in two steps, and its server answers requests on
several threads, so two racing conditional writes can both pass the check. Real S3 makes the check and the
write one atomic step; we serve moto's app one request at a time to restore that guarantee, which is the one
every test of this library relies on.

Run `python -m pydantic_s3_cas.embedded` to serve until interrupted; it prints the endpoint URL.
"""

from __future__ import annotations as _annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .child_process import popen_dying_with_parent

__all__ = ('embedded_s3', 'serve')

_READY = 'embedded S3 listening on '


@contextmanager
def embedded_s3(*, timeout: float = 30.0) -> Iterator[str]:
    """Start the embedded S3 server, yield its endpoint URL (`http://127.0.0.1:PORT`), stop it on exit.

    Raises `RuntimeError` saying what to install when moto is missing, or when the server does not come up.
    """
    try:
        import moto.server  # noqa: F401  (checked here so the error is raised in the caller's process)
    except ImportError as e:
        raise RuntimeError("the embedded S3 needs moto's server: pip install 'pydantic-s3-cas[embedded]'") from e
    # The server dies with this process even if it is SIGKILLed before the `finally` below can stop it.
    process = popen_dying_with_parent(
        [sys.executable, '-m', __name__],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1'},
    )
    try:
        endpoint = _wait_ready(process, timeout)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _wait_ready(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(_READY):
                found.append(line[len(_READY) :].strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        process.kill()
        raise RuntimeError(f'the embedded S3 server did not start within {timeout:.0f}s (exit code {process.poll()})')
    return found[0]


def _serialized(app: Any) -> Any:
    """Wrap a WSGI app so that requests run one at a time, making moto's check-then-write atomic.

    It also drops moto's own `Server` header, which werkzeug sends again: strict HTTP parsers (aiohttp in
    development mode) refuse a response with two.
    """
    lock = threading.Lock()

    def serve_one(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            return start_response(status, [(k, v) for k, v in headers if k.lower() != 'server'], *exc_info)

        with lock:
            return list(app(environ, start))

    return serve_one


def serve(host: str = '127.0.0.1', port: int = 0) -> None:
    """Serve moto's S3 on `host:port` (0 picks a free port) until terminated; print the URL once listening."""
    import signal

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(host, port, _serialized(app), threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f'{_READY}http://{host}:{server.server_port}', flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == '__main__':
    serve(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
