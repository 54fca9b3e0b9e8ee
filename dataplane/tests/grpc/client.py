"""The gRPC client of grpc_rig.rs: calls helloworld.Greeter at TARGET with :authority
AUTHORITY (the mesh routes by it) and prints one JSON object: each call's status code name
and its answer or details.
"""
import json
import sys
from concurrent import futures

import grpc

target, authority = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])


def unary(method):
    return channel.unary_unary("/helloworld.Greeter/" + method)


def outcome(call):
    try:
        got = call()
        if isinstance(got, list):
            return ["OK", [g.decode() for g in got]]
        return ["OK", got.decode()]
    except grpc.RpcError as e:
        return [e.code().name, e.details()]


out = {
    "say": outcome(lambda: unary("SayHello")(b"rig", timeout=10)),
    "again": outcome(lambda: unary("SayHelloAgain")(b"again", timeout=10)),
    "stream": outcome(
        lambda: list(channel.unary_stream("/helloworld.Greeter/Stream")(b"5", timeout=10))
    ),
    "secret": outcome(lambda: unary("Secret")(b"x", timeout=10)),
    "fail": outcome(lambda: unary("Fail")(b"x", timeout=10)),
    "deadline": outcome(lambda: unary("SayHello")(b"sleep:2000", timeout=0.3)),
}
# Concurrent calls on the one channel: streams of one HTTP/2 connection.
with futures.ThreadPoolExecutor(max_workers=16) as pool:
    calls = list(pool.map(lambda i: outcome(lambda: unary("SayHello")(b"%d" % i, timeout=10)), range(64)))
out["concurrent_ok"] = sum(1 for c in calls if c[0] == "OK" and c[1].startswith("hello "))
print(json.dumps(out))
