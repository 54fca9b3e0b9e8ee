#!/usr/bin/python3
"""A peer gateway on gateway B's multiplexed hop (mTLS, ALPN h2) that sends what it likes in
each stream's `x-xdpmesh-endpoint` field (dataplane/tests/mesh_rig.rs).

    h2peer.py HOST:PORT SNI CERT KEY CA ENDPOINTS_JSON

ENDPOINTS_JSON is a list with one entry per stream, each a list of the field's values (none,
one, or several). The streams go on one connection, in order; the script prints one JSON
object: the status of each stream, or "reset" when B reset it.
"""
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def main():
    addr, sni, cert, key, ca, spec = sys.argv[1:7]
    host, port = addr.rsplit(":", 1)
    streams = json.loads(spec)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    # The gateway's certificate names a SPIFFE ID, not the SNI (a service): the chain is
    # checked, the name is not.
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, int(port)), timeout=10)
    sock = ctx.wrap_socket(raw, server_hostname=sni)
    if sock.selected_alpn_protocol() != "h2":
        print(json.dumps({"error": "no ALPN h2"}))
        return 1
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    ids = []
    for eps in streams:
        sid = conn.get_next_available_stream_id()
        headers = [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "web.rig.mesh"),
        ] + [("x-xdpmesh-endpoint", ep) for ep in eps]
        conn.send_headers(sid, headers, end_stream=True)
        ids.append(sid)
    sock.sendall(conn.data_to_send())
    result = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(":status")
                result.setdefault(ev.stream_id, {})["status"] = status
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                result.setdefault(ev.stream_id, {})["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                result[ev.stream_id] = {"status": "reset", "ended": True}
        sock.sendall(conn.data_to_send())
        if all(result.get(sid, {}).get("ended") for sid in ids):
            break
    print(json.dumps([result.get(sid, {}).get("status", "none") for sid in ids]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
