"""A Hubble client in another language: Python stubs generated at run time by grpcio-tools
from trellis's .proto files (crates/observe/proto), reading ServerStatus, GetNodes and
GetFlows (with and without a whitelist). Prints one JSON document on stdout.

usage: client.py PROTO_DIR HOST:PORT
"""

import json
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc


def generate(proto_dir, out):
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "flow/flow.proto",
            "relay/relay.proto",
            "observer/observer.proto",
        ]
    )
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")


def main():
    proto_dir, server = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="trellis-hubble-py-")
    generate(proto_dir, out)
    sys.path.insert(0, out)
    from flow import flow_pb2
    from observer import observer_pb2, observer_pb2_grpc

    stub = observer_pb2_grpc.ObserverStub(grpc.insecure_channel(server))
    status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)

    def flows(**kw):
        found = []
        for r in stub.GetFlows(observer_pb2.GetFlowsRequest(**kw), timeout=10):
            if not r.HasField("flow"):
                continue
            f = r.flow
            item = {
                "node_name": r.node_name,
                "verdict": flow_pb2.Verdict.Name(f.verdict),
                "type": flow_pb2.FlowType.Name(f.Type),
                "source_ip": f.IP.source,
                "destination_ip": f.IP.destination,
                "summary": f.Summary,
            }
            if f.l7.HasField("http"):
                item["http"] = {
                    "code": f.l7.http.code,
                    "method": f.l7.http.method,
                    "url": f.l7.http.url,
                }
            if f.l7.HasField("dns"):
                item["dns"] = {"query": f.l7.dns.query, "ips": list(f.l7.dns.ips)}
            found.append(item)
        return found

    doc = {
        "status": {
            "num_flows": status.num_flows,
            "max_flows": status.max_flows,
            "seen_flows": status.seen_flows,
            "version": status.version,
        },
        "nodes": [n.name for n in nodes.nodes],
        "flows": flows(number=100),
        "post_only": flows(
            number=100, whitelist=[flow_pb2.FlowFilter(http_method=["POST"])]
        ),
        "get_only": flows(
            number=100, whitelist=[flow_pb2.FlowFilter(http_method=["GET"])]
        ),
    }
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
