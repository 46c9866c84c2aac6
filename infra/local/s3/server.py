"""Local S3 server for recon: moto's S3 (Apache-2.0) behind werkzeug on loopback, with every request serialized.

Why the lock: moto implements `PutObject` with `If-None-Match: *` as "look the key up, then store it" in two steps
(moto/s3/responses.py, put_object). Under moto_server's threaded werkzeug, two concurrent creates of the same key can
both pass the look-up and both succeed. Running each request under one process-wide lock makes the check and the
write atomic, so object_store's `PutMode::Create` has exactly one winner, as on AWS S3. The cost is throughput, which
tests on loopback do not need.

Usage: server.py --host 127.0.0.1 --port 19000
State is in memory: restarting the server empties every bucket (infra/local/up recreates the buckets).
"""

import argparse
import os
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


class SerializedApp:
    """Runs the wrapped WSGI app one request at a time, body read and response built inside the lock."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            captured = {}

            def capture(status, headers, exc_info=None):
                captured["args"] = (status, headers, exc_info)
                return lambda data: None  # moto never uses the write() callable

            result = self.app(environ, capture)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
        status, headers, exc_info = captured["args"]
        start_response(status, headers, exc_info)
        return [body]


class QuietHandler(MotoRequestHandler):
    # Threaded werkzeug gives this handler HTTP/1.1 with keep-alive.

    def log_request(self, code="-", size="-"):
        # Log only failures: the access log of a test run is otherwise large.
        try:
            c = int(code)
        except (TypeError, ValueError):
            c = 0
        if c >= 500:
            super().log_request(code, size)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=19000)
    args = p.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    print(f"recon s3 (moto) listening on http://{args.host}:{args.port}", flush=True)
    run_simple(args.host, args.port, SerializedApp(app), threaded=True, request_handler=QuietHandler)


if __name__ == "__main__":
    main()
