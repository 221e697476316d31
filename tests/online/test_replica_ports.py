"""find_replica_ports: among a range of ports, the ones where this service's replicas answer; a
port held by another process (one that speaks another protocol, or HTTP with another answer, or
nothing) is skipped, never an error."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving.online.app import find_replica_ports


def _listen_in_block(count: int) -> list[socket.socket]:
    """`count` listening sockets on consecutive ports (retried until a free block is found)."""
    while True:
        first = socket.socket()
        first.bind(("127.0.0.1", 0))
        base = first.getsockname()[1]
        socks = [first]
        try:
            for k in range(1, count):
                extra = socket.socket()
                extra.bind(("127.0.0.1", base + k))
                socks.append(extra)
        except OSError:
            for sock in socks:
                sock.close()
            continue
        for sock in socks:
            sock.listen()
        return socks


def _serve(sock: socket.socket, answer: bytes) -> None:
    def loop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    threading.Thread(target=loop, daemon=True).start()


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status":"ok"}' if self.path == "/v1/healthz" else b"no"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_only_the_replicas_are_found_among_ports_held_by_others():
    grpc_like, other_http, silent, replica = _listen_in_block(4)
    base = grpc_like.getsockname()[1]
    _serve(grpc_like, b"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x7f\xff\xff\xff@@@\xfe?")  # not HTTP
    _serve(other_http, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    silent.close()  # nothing listens there any more
    replica.close()
    server = ThreadingHTTPServer(("127.0.0.1", base + 3), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert find_replica_ports("127.0.0.1", base, base + 4, expect=1, timeout_s=5) == [f"http://127.0.0.1:{base + 3}"]
    finally:
        server.shutdown()
        server.server_close()
        grpc_like.close()
        other_http.close()
