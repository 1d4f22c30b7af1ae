# The baseline of the idle scenario: the smallest one-process-per-board exporter, a
# Python gRPC server (Debian's python3-grpcio) answering jumpstarter.v1's GetStatus
# with an empty response. It prints its port, then serves until killed.
from concurrent import futures

import grpc

server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
handler = grpc.method_handlers_generic_handler(
    "jumpstarter.v1.ExporterService",
    {"GetStatus": grpc.unary_unary_rpc_method_handler(lambda request, context: b"")},
)
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
