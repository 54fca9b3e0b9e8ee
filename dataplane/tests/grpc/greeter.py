"""A gRPC server for grpc_rig.rs: service helloworld.Greeter over h2c, messages as raw bytes
(no generated code, so no protoc): grpcio hands a handler the message bytes when no
deserializer is given. Prints "ready" once it listens; runs until killed.

SayHello, SayHelloAgain: "hello " + the request; "sleep:N" first sleeps N ms.
Stream: the request is a count N; N messages "part I".
Secret: answers "secret" (B's authorization denies it per method).
Fail: NOT_FOUND with a message.
"""
import sys
import time
from concurrent import futures

import grpc


def say(req, ctx):
    if req.startswith(b"sleep:"):
        time.sleep(int(req[6:]) / 1000)
    return b"hello " + req


def stream(req, ctx):
    for i in range(int(req or b"5")):
        yield b"part %d" % i


def secret(req, ctx):
    return b"secret"


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")


HANDLERS = {
    "SayHello": grpc.unary_unary_rpc_method_handler(say),
    "SayHelloAgain": grpc.unary_unary_rpc_method_handler(say),
    "Stream": grpc.unary_stream_rpc_method_handler(stream),
    "Secret": grpc.unary_unary_rpc_method_handler(secret),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
}

server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
server.add_generic_rpc_handlers(
    (grpc.method_handlers_generic_handler("helloworld.Greeter", HANDLERS),)
)
if server.add_insecure_port(sys.argv[1]) == 0:
    sys.exit("cannot listen on " + sys.argv[1])
server.start()
print("ready", flush=True)
server.wait_for_termination()
