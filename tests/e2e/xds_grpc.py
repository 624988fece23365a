"""A proxyless gRPC client (grpcio's own xDS support) for the end-to-end tests, driven over
stdin so that one channel lives through changes to the mesh:

    python xds_grpc.py PILOT NODE_ID TARGET

PILOT is `meshc pilot`'s ADS address, NODE_ID the workload the client runs as, TARGET what
follows `xds:///`. Each line read is a command, each answer one JSON line:

    calls N [HEADER=VALUE]   N calls of /e2e.Greeter/Hello: {"servers": {NAME: count}, "errors": {CODE: count}}
    csds                     the client's own view of its xDS resources, from grpcio-csds:
                             {"resources": [{"type_url", "name", "status"}]}
"""

import json
import os
import sys

PILOT, NODE, TARGET = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(
    {
        "xds_servers": [{"server_uri": PILOT, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": NODE, "locality": {"zone": "test"}},
    }
)

from concurrent import futures  # noqa: E402

import grpc  # noqa: E402
import grpc_csds  # noqa: E402
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc  # noqa: E402


def calls(channel, count, header):
    servers, errors = {}, {}
    metadata = (tuple(header.split("=", 1)),) if header else ()
    hello = channel.unary_unary("/e2e.Greeter/Hello")
    for _ in range(count):
        try:
            reply = hello(b"mesh", timeout=10, metadata=metadata).decode()
            name = reply.rsplit(" from ", 1)[-1] if " from " in reply else reply
            servers[name] = servers.get(name, 0) + 1
        except grpc.RpcError as err:
            key = f"{err.code().name}: {err.details()}"
            errors[key] = errors.get(key, 0) + 1
    return {"servers": servers, "errors": errors}


def csds(stub):
    response = stub.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=10)
    resources = []
    status_names = csds_pb2.ClientConfig.GenericXdsConfig.DESCRIPTOR.fields_by_name["client_status"].enum_type
    for config in response.config:
        for generic in config.generic_xds_configs:
            resources.append(
                {
                    "type_url": generic.type_url,
                    "name": generic.name,
                    "status": status_names.values_by_number[generic.client_status].name,
                    "error": generic.error_state.details if generic.HasField("error_state") else "",
                }
            )
    return {"resources": resources}


def main():
    channel = grpc.insecure_channel(f"xds:///{TARGET}")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_csds.add_csds_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "calls":
            out = calls(channel, int(words[1]), words[2] if len(words) > 2 else "")
        elif words[0] == "csds":
            out = csds(stub)
        else:
            out = {"error": f"unknown command {words[0]}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
