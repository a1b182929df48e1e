"""A local stub of an OpenAI-compatible chat-completions server (127.0.0.1, ephemeral port) for judge tests."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class StubServer:
    """Records every POST; answers with ``reply(n)`` (n = 0-based request number) when given, else with queued
    ``replies`` (status, text) in order. Beyond ``max_requests`` it answers 503, so a retry loop gone wrong cannot
    spin against it for long."""

    def __init__(self, reply=None, max_requests: int = 20):
        self.reply = reply
        self.replies: list[tuple[int, str]] = []
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                n = len(stub.requests)
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if n >= max_requests:
                    status, text = 503, "stub exhausted"
                elif stub.reply is not None:
                    ok = self.path.endswith("/chat/completions")
                    status, text = (200, stub.reply(n)) if ok else (404, "wrong path")
                elif stub.replies:
                    status, text = stub.replies.pop(0)
                else:
                    status, text = 503, "stub exhausted"
                if status == 200:
                    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                else:
                    payload = {"error": {"message": text}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_CONNECT(self):  # a tunnel request from a client using this server as its HTTPS proxy: refused
                stub.requests.append({"method": "CONNECT", "path": self.path, "headers": dict(self.headers),
                                      "body": None})
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
