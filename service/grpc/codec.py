"""ModelInferRequest and ModelInferResponse <-> the protocol's parsed request and output arrays
(service.v2_codec.InferRequest), with the checks and messages of V2 over HTTP.

An input's values come as typed contents (the repeated field of its datatype) or, for every input at once,
as `raw_input_contents`: one little-endian buffer per input, in the order of `inputs`. A request that sent
raw inputs gets its outputs as `raw_output_contents` (as Triton answers), BYTES ones as 4-byte lengths each
followed by its bytes; any other request gets typed contents."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.codecs import MAX_DIMS
from service.grpc import open_inference_pb2 as pb
from service.v2_codec import (
    MAX_INPUTS,
    MAX_OUTPUTS,
    MAX_PARAMETERS,
    InferRequest,
    bad,
    bytes_tensor,
    check_integers,
    check_tensor,
    text,
    texts_from_bytes,
)

# The typed contents field of each numeric datatype (FP16 has none: it travels raw only).
CONTENTS = {
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
# The numpy dtype a typed contents field holds exactly.
CONTENTS_DTYPES = {
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}
OUTPUT_DATATYPES = {np.dtype("float32"): "FP32", np.dtype("bool"): "BOOL", np.dtype("O"): "BYTES"}
PACKED_FLOATS = {"fp32_contents", "fp64_contents"}
FP32_CONTENTS = pb.InferTensorContents.DESCRIPTOR.fields_by_name["fp32_contents"].number
# Integers of typed contents are converted this many at a time.
SLICE = 65536


def parse_request(message: pb.ModelInferRequest) -> InferRequest:
    """The request's inputs as arrays shaped as declared, its requested outputs and parameters; a 400
    ServiceError (INVALID_ARGUMENT) says what is malformed."""
    inputs, raw = message.inputs, message.raw_input_contents
    if not inputs:
        raise bad("inputs must be a non-empty list of tensors")
    if len(inputs) > MAX_INPUTS:
        raise bad(f"{len(inputs)} inputs; a request has at most {MAX_INPUTS}")
    if len(message.outputs) > MAX_OUTPUTS:
        raise bad(f"{len(message.outputs)} outputs requested; a request names at most {MAX_OUTPUTS}")
    if raw and len(raw) != len(inputs):
        raise bad(f"raw_input_contents has {len(raw)} buffers for {len(inputs)} inputs; give one per input, or none")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(inputs):
        if tensor.name in arrays:
            raise bad(f"input {tensor.name[:60]!r} is given twice")
        where = f"input {tensor.name[:60]!r}"
        _check_parameters(tensor.parameters, where)
        if len(tensor.shape) > MAX_DIMS:  # before the shape becomes a list
            raise bad(f"{where}: shape must be a list of at most {MAX_DIMS} non-negative integers")
        arrays[tensor.name] = _raw_input(tensor, raw[index]) if raw else _typed_input(tensor)
    outputs: dict[str, bool | None] = {}
    for output in message.outputs:
        if not output.name:
            raise bad("each requested output needs a name")
        _check_parameters(output.parameters, f"output {output.name[:60]!r}")
        outputs[output.name] = None
    parameters = _parameters(message.parameters, "the request")
    return InferRequest(message.id or None, arrays, outputs, bool(raw), parameters)


def _raw_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> np.ndarray:
    where, dtype, size = check_tensor(tensor.name, list(tensor.shape), tensor.datatype)
    if tensor.HasField("contents"):
        raise bad(f"{where}: give its values in contents or in raw_input_contents, not both")
    if tensor.datatype == "BYTES":
        return texts_from_bytes(raw, size, where).reshape(tensor.shape)
    if len(raw) != size * dtype.itemsize:
        raise bad(
            f"{where}: raw_input_contents holds {len(raw)} bytes, but shape {list(tensor.shape)} of "
            f"{tensor.datatype} takes {size * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype, count=size).reshape(tensor.shape)


def _typed_input(tensor: pb.ModelInferRequest.InferInputTensor) -> np.ndarray:
    shape, datatype = list(tensor.shape), tensor.datatype
    where, dtype, size = check_tensor(tensor.name, shape, datatype)
    if datatype == "BYTES":
        return _typed_texts(tensor, shape, size, where)
    field = CONTENTS.get(datatype)
    if field is None:
        raise bad(f"{where}: {datatype} has no typed contents; send it in raw_input_contents")
    others = [name.name for name, _ in tensor.contents.ListFields() if name.name != field]
    if others:
        raise bad(f"{where}: a {datatype} tensor's values go in contents.{field}, not {others[0]}")
    values = getattr(tensor.contents, field)
    if len(values) != size:
        raise bad(f"{where}: contents.{field} has {len(values)} values, shape {shape} needs {size}")
    array = _numbers(tensor.contents, field, size)
    if dtype.kind in "iu" and array.size and array.dtype != dtype:
        array = check_integers(array, values, datatype, where)  # 300 in uint_contents is no UINT8
    return array.astype(dtype, copy=False).reshape(shape)


def _typed_texts(tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], size: int, where: str) -> np.ndarray:
    others = [name.name for name, _ in tensor.contents.ListFields() if name.name != "bytes_contents"]
    if others:
        raise bad(f"{where}: a BYTES tensor's values go in contents.bytes_contents, not {others[0]}")
    values = tensor.contents.bytes_contents
    if len(values) != size:
        raise bad(f"{where}: contents.bytes_contents has {len(values)} values, shape {shape} needs {size}")
    return np.array([text(value, where) for value in values], dtype=object).reshape(shape)


def _numbers(contents: pb.InferTensorContents, field: str, size: int) -> np.ndarray:
    """A typed contents field's values. Floats are packed as little-endian bytes on the wire, so the
    contents (holding only this field) are serialized and read by numpy at once; integers are varints,
    converted a slice at a time so that no one call holds the GIL long."""
    dtype = CONTENTS_DTYPES[field]
    if size == 0:
        return np.empty(0, dtype)
    if field in PACKED_FLOATS:
        return _unpacked(contents.SerializeToString(), dtype, size)
    values = getattr(contents, field)
    return np.concatenate([np.array(values[start : start + SLICE], dtype) for start in range(0, size, SLICE)])


def _unpacked(wire: bytes, dtype: type, size: int) -> np.ndarray:
    """The values of a message whose only field is a packed repeated float field: its one-byte tag, the
    payload's length as a varint, then the payload."""
    length, position = _varint(wire, 1)
    if length != size * np.dtype(dtype).itemsize or position + length != len(wire):
        raise bad("the typed contents could not be read")  # not what protoc writes for one packed field
    return np.frombuffer(wire, dtype=np.dtype(dtype).newbyteorder("<"), count=size, offset=position)


def _varint(wire: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = wire[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if byte < 0x80:
            return value, position


def _packed_floats(field_number: int, array: np.ndarray, dtype: str) -> bytes:
    """A packed repeated float field (wire type 2) holding `array`, to parse into contents at once."""
    payload = np.ascontiguousarray(array, dtype=dtype).tobytes()
    length, size = bytearray(), len(payload)
    while True:
        length.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    return bytes([field_number << 3 | 2]) + bytes(length) + payload


def slow_to_parse(message: pb.ModelInferRequest) -> bool:
    """Whether converting the request's values takes long enough to do off the event loop: many integers
    sent as typed contents (varints, read by Python)."""
    if len(message.inputs) > MAX_INPUTS:
        return False  # refused by parse_request at once
    return any(
        len(getattr(tensor.contents, field)) > SLICE
        for tensor in message.inputs
        for field in ("int_contents", "int64_contents", "uint_contents", "uint64_contents")
    )


def _parameters(parameters: Any, where: str) -> dict[str, Any]:
    _check_parameters(parameters, where)
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param") for key, value in parameters.items()
    }


def _check_parameters(parameters: Any, where: str) -> None:
    if len(parameters) > MAX_PARAMETERS:
        raise bad(f"parameters of {where} has {len(parameters)} entries; at most {MAX_PARAMETERS}")


def render_response(
    request: InferRequest, model: str, version: int, outputs: dict[str, np.ndarray], parameters: dict[str, Any]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request.id or "")
    for key, value in parameters.items():
        _set_parameter(response.parameters[key], value)
    for name, array in outputs.items():
        tensor = response.outputs.add(name=name, datatype=OUTPUT_DATATYPES[array.dtype], shape=array.shape)
        if request.binary_default:
            raw = bytes_tensor(array) if array.dtype == object else np.ascontiguousarray(array).tobytes()
            response.raw_output_contents.append(raw)
        elif array.dtype == object:
            tensor.contents.bytes_contents.extend(str(item).encode() for item in array.ravel())
        elif array.dtype == bool:
            tensor.contents.bool_contents.extend(array.ravel().tolist())
        else:
            tensor.contents.MergeFromString(_packed_floats(FP32_CONTENTS, array, "<f4"))
    return response


def _set_parameter(parameter: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = str(value)
