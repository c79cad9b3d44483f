"""The embedded local S3 at its old import path (`python -m pydantic_graph_s3.storage.embedded` still serves).

It lives in `pydantic_s3_cas.embedded`.
"""

import sys

from pydantic_s3_cas.embedded import embedded_s3, serve

__all__ = ('embedded_s3', 'serve')

if __name__ == '__main__':
    serve(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
