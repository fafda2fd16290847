"""The Open Inference Protocol's widely used Python clients, unmodified, as a user's program runs them: one
inference of `x` rows, the requested outputs printed as JSON. Run as a script (a process of its own:
tritonclient.grpc and kserve each register the protocol's messages under the same names, and cannot share
one Python process):

    python tests/service/v2_clients.py CLIENT ADDRESS MODEL FORM < {"x": [[...]], "outputs": [...], "parameters": {}}

CLIENT: triton-grpc, triton-http, kserve-grpc, kserve-rest. FORM: binary (raw bytes) or typed (JSON data, or
gRPC's typed contents)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np


def triton_grpc(address: str, model: str, x: np.ndarray, outputs: list[str], parameters: dict[str, Any]) -> Any:
    import tritonclient.grpc as triton

    with triton.InferenceServerClient(address) as client:
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x)
        asked = [triton.InferRequestedOutput(name) for name in outputs]
        result = client.infer(model, [given], outputs=asked, parameters=parameters or None)
        return {name: result.as_numpy(name) for name in outputs}


def triton_http(
    address: str, model: str, x: np.ndarray, outputs: list[str], parameters: dict[str, Any], binary: bool
) -> Any:
    import tritonclient.http as triton

    with triton.InferenceServerClient(address) as client:
        given = triton.InferInput("x", list(x.shape), "FP32")
        given.set_data_from_numpy(x, binary_data=binary)
        asked = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs]
        result = client.infer(model, [given], outputs=asked, parameters=parameters or None)
        return {name: result.as_numpy(name) for name in outputs}


def kserve_request(model: str, x: np.ndarray, outputs: list[str], parameters: dict[str, Any], binary: bool) -> Any:
    from kserve import InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    given = InferInput("x", list(x.shape), "FP32")
    given.set_data_from_numpy(x, binary_data=binary)
    asked = [RequestedOutput(name, {"binary_data": binary} if binary else None) for name in outputs]
    return InferRequest(model, [given], parameters=parameters or None, request_outputs=asked)


async def kserve_grpc(
    address: str, model: str, x: np.ndarray, outputs: list[str], parameters: dict[str, Any], binary: bool
) -> Any:
    from kserve import InferenceGRPCClient

    async with InferenceGRPCClient(address) as client:
        assert await client.is_server_live() and await client.is_server_ready()
        assert await client.is_model_ready(model)
        response = await client.infer(kserve_request(model, x, outputs, parameters, binary))
        return {output.name: output.as_numpy() for output in response.outputs}


async def kserve_rest(
    address: str, model: str, x: np.ndarray, outputs: list[str], parameters: dict[str, Any], binary: bool
) -> Any:
    from kserve import InferenceRESTClient, RESTConfig

    async with InferenceRESTClient(RESTConfig(protocol="v2")) as client:
        base = f"http://{address}"
        assert await client.is_server_live(base) and await client.is_server_ready(base)
        assert await client.is_model_ready(base, model)
        response = await client.infer(base, kserve_request(model, x, outputs, parameters, binary), model)
        return {output.name: output.as_numpy() for output in response.outputs}


def main() -> None:
    client, address, model, form = sys.argv[1:5]
    asked = json.load(sys.stdin)
    x, outputs, parameters = np.asarray(asked["x"], np.float32), asked["outputs"], asked.get("parameters", {})
    binary = form == "binary"
    if client == "triton-grpc":
        answer = triton_grpc(address, model, x, outputs, parameters)
    elif client == "triton-http":
        answer = triton_http(address, model, x, outputs, parameters, binary)
    elif client == "kserve-grpc":
        answer = asyncio.run(kserve_grpc(address, model, x, outputs, parameters, binary))
    else:
        answer = asyncio.run(kserve_rest(address, model, x, outputs, parameters, binary))
    print(json.dumps({name: _plain(array) for name, array in answer.items()}))


def _plain(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        return [item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel()]
    return array.tolist()


if __name__ == "__main__":
    main()
