"""A GRPCInferenceService whose ModelInfer answers one stored response to every call, on grpcio's asyncio
server and uvloop as the service's workers run it: what grpcio alone costs per call, the ceiling that
bench/grpc_bench.py shows beside the service. Several copies share the port (SO_REUSEPORT), as the
service's workers do.

    python bench/grpc_echo.py PORT RESPONSE_FILE   (a serialized ModelInferResponse)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop

from service.grpc import open_inference_pb2 as pb
from service.grpc import open_inference_pb2_grpc as pb_grpc


class Echo(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, answer: pb.ModelInferResponse) -> None:
        self.answer = answer

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        return self.answer


async def serve(port: int, answer: pb.ModelInferResponse) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(answer), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), pb.ModelInferResponse.FromString(Path(sys.argv[2]).read_bytes())))
