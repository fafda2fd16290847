"""Each worker's gRPC server (grpcio's asyncio server, on the worker's event loop beside the HTTP server):
the Open Inference Protocol's GRPCInferenceService, gRPC health checking (grpc.health.v1, which Kubernetes'
grpc probes and grpc_health_probe call) and server reflection (which grpcurl reads).

Like the HTTP port, the gRPC port is bound by every worker with SO_REUSEPORT (grpcio's default), so the
kernel spreads new connections over the workers; the arbiter holds it meanwhile (service.workers). A gRPC
connection stays with the worker that accepted it, as an HTTP keep-alive connection does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.grpc import open_inference_pb2 as pb
from service.grpc.servicer import InferenceServicer, handlers
from service.registry import Registry
from service.settings import Settings

logger = logging.getLogger("service.grpc")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# How often Health.Watch looks at readiness again.
WATCH_INTERVAL_S = 1.0
MAX_STREAMS_PER_CONNECTION = 128
IDLE_MS = 5 * 60 * 1000
AGE_MS = 30 * 60 * 1000
KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS = 60 * 1000, 20 * 1000


class GrpcServer:
    """Started once the worker's HTTP server listens; stopped (draining its calls) when that one drains."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"[{host}]:{self.settings.grpc_port}" if ":" in host else f"{host}:{self.settings.grpc_port}"

    async def start(self) -> None:
        settings = self.settings
        server = grpc.aio.server(options=options(settings))
        server.add_generic_rpc_handlers((handlers(InferenceServicer(self.app)),))
        health_pb2_grpc.add_HealthServicer_to_server(Health(self.app.state.registry), server)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise OSError(f"cannot listen for gRPC on {self.address}: {error}") from None
        await server.start()
        self.server = server
        logger.info("gRPC listening on %s", self.address)

    async def stop(self, grace: float) -> None:
        """Refuses new calls at once and waits up to `grace` seconds for those in flight."""
        if self.server is not None:
            await self.server.stop(grace)


def options(settings: Settings) -> list[tuple[str, int]]:
    """The server's channel arguments: the message limit, and bounds on what a connection may hold."""
    grace_s = settings.request_timeout_s + settings.send_timeout_s
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 1),
        # HTTP/2 streams one connection may have open at once (the client queues more).
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        # A connection must finish its handshake as an HTTP request its headers; an idle one is closed; any
        # is closed (GOAWAY, its calls given the grace of a request and its answer) after a while, which
        # also spreads long-lived clients over the workers again.
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", IDLE_MS),
        ("grpc.max_connection_age_ms", AGE_MS),
        ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
        # Pings find connections whose peer has gone.
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


class Health(health_pb2_grpc.HealthServicer):
    """SERVING while the service is ready (as /readyz says), for the server ("") and the inference
    service; NOT_SERVING otherwise; any other service name is NOT_FOUND, as the protocol asks."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _status(self, service: str) -> Any:
        if service not in ("", SERVICE_NAME):
            return None
        ready = self.registry.readiness()[0]
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        status = self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:100]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        last = None
        while True:
            status = self._status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(WATCH_INTERVAL_S)
