"""A scripted OpenAI-compatible endpoint on loopback, for tests of clients that call one."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Scripted(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint answering from a script; a None entry answers HTTP 503 once, and a
    callable entry is called (outside the lock; it may block, to hold a client mid-run) for the reply."""

    def do_GET(self):  # /v1/models
        self._send(200, {"data": [{"id": "scripted"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.prompts.append(body["messages"][-1]["content"])
            reply = self.server.script.pop(0) if self.server.script else "no more script"
        if callable(reply):
            reply = reply()
        if reply is None:
            self._send(503, {"error": {"message": "busy"}})
        else:
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client was killed while it waited
            pass

    def log_message(self, *args):  # keep the test output clean
        pass


@contextmanager
def serve_scripted():
    """(server, base URL) of a scripted endpoint on a free loopback port; set `server.script` to script it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.script, server.prompts, server.lock = [], [], threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
