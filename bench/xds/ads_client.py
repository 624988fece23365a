"""Loads meshc pilot like Envoy sidecars would: for each workload named, one ADS stream that
takes its clusters, their endpoints, its listeners and routes, ACKing each, then closes.

    python ads_client.py HOST:PORT WORKLOAD...

Runs with the Python of `cargo xtask test`'s .venv (grpcio and xds-protos).
"""

import queue
import sys

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

PREFIX = "type.googleapis.com/envoy.config."
TYPES = [
    ("cluster.v3.Cluster", None),
    ("endpoint.v3.ClusterLoadAssignment", "clusters"),
    ("listener.v3.Listener", None),
    ("route.v3.RouteConfiguration", ["outbound"]),
]


def load(stub, workload):
    requests = queue.Queue()
    node = base_pb2.Node(id=workload, user_agent_name="envoy")
    requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=PREFIX + TYPES[0][0]))
    responses = stub.StreamAggregatedResources(iter(requests.get, None), timeout=120)
    clusters, count = [], 0
    for index in range(len(TYPES)):
        response = next(responses)
        count += len(response.resources)
        if index == 0:
            clusters = [cluster_pb2.Cluster.FromString(it.value).name for it in response.resources]
        requests.put(discovery_pb2.DiscoveryRequest(type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce))
        if index + 1 < len(TYPES):
            names = TYPES[index + 1][1]
            names = clusters if names == "clusters" else (names or [])
            requests.put(discovery_pb2.DiscoveryRequest(type_url=PREFIX + TYPES[index + 1][0], resource_names=names))
    requests.put(None)
    return count


def main():
    channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    total = sum(load(stub, workload) for workload in sys.argv[2:])
    print(f"{len(sys.argv) - 2} workloads, {total} resources", file=sys.stderr)


if __name__ == "__main__":
    main()
