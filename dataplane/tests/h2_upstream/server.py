"""An h2c server (prior knowledge) for dataplane/tests/h2_upstream.rs, on the python3-h2 library.

  /trailers  200, body "hello world", then trailers x-checksum: 42
  /grpc      a gRPC trailers-only response: HEADERS (grpc-status 14) that end the stream
  /reset     RST_STREAM INTERNAL_ERROR, no response
  /echo      the request body back, and its trailers' x-sum as a response header
  else       200 "ok"

Each GOAWAY a client sends is appended to EVENTS (when given) as "goaway CODE LAST_STREAM".

Usage: server.py PORT [EVENTS]
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    reqs = {}
    bodies = {}
    trailers = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                reqs[ev.stream_id] = dict(ev.headers)
                bodies[ev.stream_id] = b""
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers[ev.stream_id] = dict(ev.headers)
            elif isinstance(ev, h2.events.ConnectionTerminated) and EVENTS:
                with open(EVENTS, "a") as f:
                    f.write("goaway %d %d\n" % (ev.error_code, ev.last_stream_id))
            elif isinstance(ev, h2.events.StreamEnded):
                sid = ev.stream_id
                if sid in reqs:
                    respond(conn, sid, reqs.pop(sid), bodies.pop(sid, b""), trailers.pop(sid, {}))
        sock.sendall(conn.data_to_send())


def respond(conn, sid, head, body, trailers):
    path = head.get(b":path", b"/").decode()
    if path.startswith("/reset"):
        conn.reset_stream(sid, error_code=2)
    elif path.startswith("/trailers"):
        conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
        conn.send_data(sid, b"hello world")
        conn.send_headers(sid, [("x-checksum", "42")], end_stream=True)
    elif path.startswith("/grpc"):
        conn.send_headers(
            sid,
            [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "14")],
            end_stream=True,
        )
    elif path.startswith("/echo"):
        sum_ = trailers.get(b"x-sum", b"-").decode()
        conn.send_headers(
            sid,
            [(":status", "200"), ("content-length", str(len(body))), ("x-got-sum", sum_),
             ("x-got-te", head.get(b"te", b"-").decode()),
             ("x-got-authority", head.get(b":authority", b"-").decode())],
        )
        conn.send_data(sid, body, end_stream=True)
    else:
        conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
        conn.send_data(sid, b"ok", end_stream=True)


EVENTS = sys.argv[2] if len(sys.argv) > 2 else None


def main():
    port = int(sys.argv[1])
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    print("listening", flush=True)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=lambda: safe(s), daemon=True).start()


def safe(s):
    try:
        serve(s)
    except Exception as e:  # a test server: a broken connection ends only itself
        print("connection ended:", e, file=sys.stderr, flush=True)
    finally:
        s.close()


if __name__ == "__main__":
    main()
