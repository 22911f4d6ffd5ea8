"""Fault injectors for reliability drills (tests and jobs/drill_reliability.py), not used by the
sweep: an S3 proxy that answers 503 SlowDown to a share of GETs, and a TCP gate in front of a
Milvus server that can be shut (drops every connection, refuses new ones) and reopened."""
from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class FlakyS3:
    """An HTTP proxy in front of the S3 endpoint that answers 503 SlowDown to a share of GETs:
    of the GETs whose path contains ``match``, the 1st, (every+1)-th, ... of each object fail
    (every=2: every object's first GET, half of all GETs; every=0: none), and keys containing
    "always-503" always do. ``every`` may be changed while it runs. For reads: request bodies are
    forwarded by Content-Length, so chunked (aws-chunked) uploads do not pass through it."""

    def __init__(self, upstream: str, every: int = 2, match: str = "/img/"):
        self.gets, self.failed, self.every, self.match = {}, 0, every, match
        up = urlparse(upstream)
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "GET" and proxy.match in self.path:
                    with lock:
                        n = proxy.gets[self.path] = proxy.gets.get(self.path, 0) + 1
                        fail = "always-503" in self.path or bool(proxy.every and n % proxy.every == 1)
                        proxy.failed += fail
                    if fail:
                        msg = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(msg)))
                        self.end_headers()
                        self.wfile.write(msg)
                        return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                conn.request(self.command, self.path, body=body or None,
                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", r.getheader("Content-Length") if self.command == "HEAD"
                                 else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class TcpGate:
    """A TCP forwarder in front of the Milvus server that can be shut: shutting drops every open
    connection and refuses new ones (what a restarting Milvus or a network partition looks like)."""

    def __init__(self, upstream: str):
        u = urlparse(upstream)
        self.up = (u.hostname, u.port)
        self.open, self.conns, self.lock = True, [], threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                c.close()
                continue
            u = socket.create_connection(self.up)
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def shut(self):
        self.open = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns = []

    def reopen(self):
        self.open = True

    def close(self):
        self.shut()
        self.sock.close()
