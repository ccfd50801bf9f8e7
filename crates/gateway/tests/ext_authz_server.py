"""A gRPC external authorization server (envoy.service.auth.v3.Authorization/Check) for the
gateway's tests, written with grpcio against trellis's proto/ext_authz.proto (Envoy's field
numbers), compiled here with grpc_tools.

Decides like a small policy engine would:
- `authorization: Bearer good` is allowed; the backend gets `x-user: alice` and no
  `authorization` header.
- a path under /teapot is denied with 418, a header and a body of its own.
- anything else is denied: UNAUTHENTICATED with a 401 and body `no`.

Prints the port it listens on (127.0.0.1), then serves until killed.
"""

import os
import sys
import tempfile
from concurrent import futures

import grpc
import grpc_tools
from grpc_tools import protoc

proto_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proto")
out = tempfile.mkdtemp()
well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
code = protoc.main([
    "protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out}",
    f"--grpc_python_out={out}", os.path.join(proto_dir, "ext_authz.proto"),
])
if code != 0:
    sys.exit(f"protoc failed: {code}")
sys.path.insert(0, out)
import ext_authz_pb2 as pb  # noqa: E402
import ext_authz_pb2_grpc as pb_grpc  # noqa: E402


def header(key, value):
    return pb.HeaderValueOption(header=pb.HeaderValue(key=key, value=value))


class Authorization(pb_grpc.AuthorizationServicer):
    def Check(self, request, context):
        http = request.attributes.request.http
        source = request.attributes.source.address.socket_address.address
        if http.headers.get("authorization") == "Bearer good":
            return pb.CheckResponse(
                status=pb.RpcStatus(code=0),
                ok_response=pb.OkHttpResponse(
                    headers=[header("x-user", "alice"), header("x-checked", f"{http.method} {http.path} {http.host} {source}")],
                    headers_to_remove=["authorization"],
                ),
            )
        if http.path.startswith("/teapot"):
            return pb.CheckResponse(
                status=pb.RpcStatus(code=7),
                denied_response=pb.DeniedHttpResponse(
                    status=pb.HttpStatus(code=418),
                    headers=[header("x-why", "tea")],
                    body="short and stout",
                ),
            )
        return pb.CheckResponse(
            status=pb.RpcStatus(code=16),
            denied_response=pb.DeniedHttpResponse(status=pb.HttpStatus(code=401), body="no"),
        )


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
pb_grpc.add_AuthorizationServicer_to_server(Authorization(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
