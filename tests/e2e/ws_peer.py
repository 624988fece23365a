"""A real WebSocket peer for the end-to-end tests, on the `websockets` library.

    python ws_peer.py server
    python ws_peer.py client SIDECAR_ADDR HOST
    python ws_peer.py hold SIDECAR_ADDR HOST

The server echoes every message. The client connects to SIDECAR_ADDR (a sidecar's outbound
listener) and opens ws://HOST/chat over that connection, so the handshake carries HOST;
it sends a text and a 100 kB binary message and prints one JSON line with what came back.
`hold` opens the same WebSocket, says "open" on a line once a first echo came back, waits
for a line on stdin, then sends one more message and prints the JSON line with its echo.
"""

import json
import socket
import sys

from websockets.sync.client import connect
from websockets.sync.server import serve


def echo(websocket):
    for message in websocket:
        websocket.send(message)


def server():
    with serve(echo, "127.0.0.1", 0, max_size=1 << 20) as running:
        print("serving", running.socket.getsockname()[1], flush=True)
        running.serve_forever()


def client(address, host):
    ip, port = address.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=10)
    with connect(f"ws://{host}/chat", sock=sock, open_timeout=10, max_size=1 << 20) as websocket:
        websocket.send("ping")
        text = websocket.recv(timeout=10)
        websocket.send(bytes(range(256)) * 400)
        binary = websocket.recv(timeout=10)
        print(json.dumps({"text": text, "binary_bytes": len(binary), "binary_intact": binary == bytes(range(256)) * 400}))


def hold(address, host):
    ip, port = address.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=10)
    with connect(f"ws://{host}/chat", sock=sock, open_timeout=10) as websocket:
        websocket.send("ping")
        first = websocket.recv(timeout=10)
        print("open", first, flush=True)
        sys.stdin.readline()
        websocket.send("still there")
        later = websocket.recv(timeout=10)
        print(json.dumps({"first": first, "later": later}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    elif sys.argv[1] == "hold":
        hold(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[2], sys.argv[3])
