"""A real gRPC peer for the end-to-end tests, on grpcio with no generated code.

    python grpc_peer.py server [NAME]
    python grpc_peer.py client TARGET AUTHORITY CASE

The server offers /e2e.Greeter/Hello (unary), /e2e.Greeter/Count (server streaming),
/e2e.Greeter/Fail (answers NOT_FOUND), /e2e.Greeter/Slow (sleeps 3 s) and /e2e.Greeter/Flaky (answers
UNAVAILABLE on a server named "bad", and like Hello elsewhere). Messages are raw bytes, so no
.proto is needed. A server given a NAME says it in Hello's answer ("hello mesh from NAME"). The
client prints one JSON line with what it received.
"""

import json
import sys
import time
from concurrent import futures

import grpc


NAME = b""


def hello(request, context):
    return b"hello " + request + (b" from " + NAME if NAME else b"")


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")


def flaky(request, context):
    if NAME == b"bad":
        context.abort(grpc.StatusCode.UNAVAILABLE, "bad instance")
    return hello(request, context)


def slow(request, context):
    time.sleep(3)
    return b"late"


def serve():
    handlers = {
        "Hello": grpc.unary_unary_rpc_method_handler(hello),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("e2e.Greeter", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving {port}", flush=True)
    server.wait_for_termination()


def outcome(call):
    """A call's status code and its reply or details, as one entry of a list."""
    try:
        return {"code": "OK", "reply": call().decode()}
    except grpc.RpcError as err:
        return {"code": err.code().name, "details": err.details()}


def client(target, authority, case):
    channel = grpc.insecure_channel(target, options=[("grpc.default_authority", authority)])
    out = {}
    if case in ("flaky", "limited"):
        # Several calls on one channel, each outcome in order.
        method = "/e2e.Greeter/Flaky" if case == "flaky" else "/e2e.Greeter/Hello"
        metadata = (("x-limit", "1"),) if case == "limited" else ()
        stub = channel.unary_unary(method)
        calls = [outcome(lambda: stub(b"mesh", timeout=10, metadata=metadata)) for _ in range(6)]
        print(json.dumps({"calls": calls}), flush=True)
        return
    try:
        if case == "hello":
            out["reply"] = channel.unary_unary("/e2e.Greeter/Hello")(b"mesh", timeout=10).decode()
        elif case == "count":
            out["replies"] = [it.decode() for it in channel.unary_stream("/e2e.Greeter/Count")(b"5", timeout=10)]
        elif case == "blocked":
            metadata = (("x-block", "1"),)
            out["reply"] = channel.unary_unary("/e2e.Greeter/Hello")(b"mesh", timeout=10, metadata=metadata).decode()
        elif case == "fail":
            channel.unary_unary("/e2e.Greeter/Fail")(b"x", timeout=10)
        elif case == "slow":
            channel.unary_unary("/e2e.Greeter/Slow")(b"x", timeout=10)
        out["code"] = "OK"
    except grpc.RpcError as err:
        out["code"] = err.code().name
        out["details"] = err.details()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        NAME = sys.argv[2].encode() if len(sys.argv) > 2 else b""
        serve()
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4])
