"""The Open Inference Protocol V2 infer request and response, with the binary tensor data extension:
bytes <-> numpy, and nothing about models.

A request is a JSON header, optionally followed by the inputs' raw bytes: the `Inference-Header-Content-
Length` header says where the JSON ends, and each binary input says its size in `parameters.binary_data_
size`, in the order of `inputs`. Outputs are written as JSON `data` or, when asked for (`binary_data` per
output, `binary_data_output` per request), as raw bytes after the JSON header, laid out the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service import bodies, fastjson
from service.codecs import MAX_AXIS, MAX_DIMS, as_array, holds_booleans
from service.errors import ServiceError

# V2 datatype -> numpy dtype of its little-endian wire layout.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMERIC_INPUTS = {name for name in DATATYPES if name != "BOOL"}
# Rows and latents are numbers; BYTES are taken for other inputs (a table's label column: service.v2_infer).
NUMBERS_ONLY = ("x", "z")
# BYTES elements are read one by one in Python: a tensor holds at most this many (labels of as many rows).
MAX_BYTES_ELEMENTS = 65536
OUTPUT_DATATYPES = {np.dtype("float32"): "FP32", np.dtype("bool"): "BOOL", np.dtype("O"): "BYTES"}
HEADER_LENGTH = "Inference-Header-Content-Length"
# Where the numbers of a JSON request are: each input's data.
DATA: fastjson.Pattern = ("inputs", None, "data")


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]  # by name, as sent (any numeric dtype), shaped as declared
    outputs: dict[str, bool | None]  # requested name -> binary (None: the request's default)
    binary_default: bool
    parameters: dict[str, Any] = field(default_factory=dict)

    def binary(self, name: str) -> bool:
        wanted = self.outputs.get(name)
        return self.binary_default if wanted is None else wanted


def bad(message: str) -> ServiceError:
    return ServiceError(400, "invalid_request", message)


# Far more than any request needs (we take one input; a model has nine outputs): counted before any value
# is converted, so a request of a million inputs costs its parse and nothing more.
MAX_INPUTS, MAX_OUTPUTS, MAX_PARAMETERS, MAX_TENSOR_FIELDS = 8, 32, 64, 16
# Fields other than id, parameters, inputs and outputs are ignored, as Triton and MLServer do: KServe's
# client sends model_name. A request may have this many fields in all.
MAX_FIELDS = 16


def scan(header_length: str | None, row_shape: tuple[int, ...], latent: int, max_rows: int) -> bodies.Feed:
    """What checks an infer body as it arrives: its JSON header against what the largest valid request (of x
    rows or z latents) holds; the binary data after it is not JSON."""
    length = _header_length(header_length)
    x, z = bodies.JsonLimits.for_rows(row_shape, max_rows), bodies.JsonLimits.for_rows((latent,), max_rows)
    json_scan = bodies.JsonScan(bodies.JsonLimits(max(x.values, z.values), max(x.arrays, z.arrays)))
    seen = 0

    def feed(chunk: bytes) -> None:
        nonlocal seen
        if length is not None:
            chunk = chunk[: max(0, length - seen)]
        seen += len(chunk)
        if chunk:
            json_scan(chunk)

    return feed


def parse_request(body: bytes, header_length: str | None, fast_only: bool = False) -> InferRequest | None:
    """The infer request in `body`; every way it can be malformed is a 400 that says where. `fast_only`:
    None when simdjson's fast path cannot read it, for the caller to run the slower way elsewhere."""
    header, binary = _split(body, header_length)
    element = fastjson.parse(header)
    document = None
    if element is not None and fastjson.is_object(element):
        _check_counts(element)
        document = fastjson.convert(element, (DATA,), header)
    if document is None and fast_only:
        return None
    del element  # the parser's buffers go with it
    if document is None:
        try:
            document = orjson.loads(header)
        except orjson.JSONDecodeError as exc:
            raise bad(f"the inference header is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise bad("the inference header must be a JSON object")
        _check_counts(document)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad("id must be a string")
    parameters = _parameters(document, "the request")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in document["inputs"]:
        name, array, offset = _input(tensor, binary, offset)
        if name in inputs:
            raise bad(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise bad(f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise bad("parameters.binary_data_output must be true or false")
    return InferRequest(request_id, inputs, _outputs(document.get("outputs")), binary_default, parameters)


def _check_counts(document: Any) -> None:
    """The request's fields, and how many inputs, outputs and parameters it has, checked on the parsed
    document (simdjson's, unconverted, or orjson's) before any value is converted."""
    if len(document) > MAX_FIELDS:
        raise bad(f"the request has {len(document)} fields; at most {MAX_FIELDS} (id, parameters, inputs, outputs...)")
    inputs = document.get("inputs")
    if not fastjson.is_list(inputs) or not len(inputs):
        raise bad("inputs must be a non-empty list of tensors")
    if len(inputs) > MAX_INPUTS:
        raise bad(f"{len(inputs)} inputs; a request has at most {MAX_INPUTS}")
    outputs = document.get("outputs")
    if fastjson.is_list(outputs) and len(outputs) > MAX_OUTPUTS:
        raise bad(f"{len(outputs)} outputs requested; a request names at most {MAX_OUTPUTS}")
    _check_parameters(document.get("parameters"), "the request")
    for tensor in inputs:
        if fastjson.is_dict(tensor):
            if len(tensor) > MAX_TENSOR_FIELDS:
                raise bad(f"an input has {len(tensor)} fields; a tensor has name, shape, datatype, parameters, data")
            _check_parameters(tensor.get("parameters"), "an input")


def _check_parameters(parameters: Any, where: str) -> None:
    # The protocol's parameters are booleans, numbers and strings: nothing to convert at length.
    if not fastjson.is_dict(parameters):
        return  # absent, or refused with its message by _parameters
    if len(parameters) > MAX_PARAMETERS:
        raise bad(f"parameters of {where} has {len(parameters)} entries; at most {MAX_PARAMETERS}")
    if any(fastjson.is_list(parameters[key]) or fastjson.is_dict(parameters[key]) for key in parameters):
        raise bad(f"parameters of {where} must be booleans, numbers or strings")


def _header_length(header_length: str | None) -> int | None:
    if header_length is None:
        return None
    # str.isdigit also takes digits such as "\xb2" that int() refuses: ASCII digits only.
    if not (header_length.isascii() and header_length.isdigit()) or len(header_length) > 12:
        raise bad(f"{HEADER_LENGTH} must be a byte count, got {header_length[:40]!r}")
    return int(header_length)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    length = _header_length(header_length)
    if length is None:
        return body, b""
    if length > len(body):
        raise bad(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
    return body[:length], body[length:]


def _parameters(document: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise bad(f"parameters of {where} must be a JSON object")
    return parameters


def _input(tensor: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise bad("each input must be a JSON object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise bad("each input needs a name")
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    where, dtype, size = check_tensor(name, shape, datatype)
    assert isinstance(shape, list) and isinstance(datatype, str)  # as check_tensor found
    size_in_bytes = _parameters(tensor, where).get("binary_data_size")
    if size_in_bytes is not None:
        if type(size_in_bytes) is not int or size_in_bytes < 0:
            raise bad(f"{where}: binary_data_size must be a non-negative integer")
        if datatype == "BYTES":
            if offset + size_in_bytes > len(binary):
                raise bad(f"{where}: {size_in_bytes} bytes of binary data were promised, {len(binary) - offset} remain")
            texts = texts_from_bytes(binary[offset : offset + size_in_bytes], size, where)
            return name, texts.reshape(shape), offset + size_in_bytes
        if size_in_bytes != size * dtype.itemsize:
            raise bad(
                f"{where}: binary_data_size is {size_in_bytes} bytes, but shape {shape} of {datatype} "
                f"takes {size * dtype.itemsize}"
            )
        if offset + size_in_bytes > len(binary):
            raise bad(f"{where}: {size_in_bytes} bytes of binary data were promised, {len(binary) - offset} remain")
        array = np.frombuffer(binary, dtype=dtype, count=size, offset=offset).reshape(shape)
        return name, array, offset + size_in_bytes
    if "data" not in tensor:
        raise bad(f"{where}: give its values in data, or as binary data with parameters.binary_data_size")
    if datatype == "BYTES":
        return name, _json_texts(tensor["data"], shape, where), offset
    return name, _json_data(tensor["data"], shape, datatype, where), offset


def check_tensor(name: str, shape: Any, datatype: Any) -> tuple[str, np.dtype[Any], int]:
    """An input's shape and datatype checked: where it is (for messages), its numpy dtype and value count."""
    where = f"input {name[:60]!r}"
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise bad(f"{where}: shape must be a list of at most {MAX_DIMS} non-negative integers")
    if any(dim > MAX_AXIS for dim in shape):  # numpy fails on such axes even when another is 0
        raise bad(f"{where}: shape {shape[:MAX_DIMS]} has an axis over {MAX_AXIS}")
    if datatype == "BYTES":
        if name in NUMBERS_ONLY:
            raise bad(f"{where}: BYTES tensors are not taken here; send numbers ({sorted(NUMERIC_INPUTS)})")
        if math.prod(shape) > MAX_BYTES_ELEMENTS:
            raise bad(f"{where}: a BYTES tensor holds at most {MAX_BYTES_ELEMENTS} elements")
        return where, np.dtype(object), math.prod(shape)
    if not isinstance(datatype, str) or datatype not in NUMERIC_INPUTS:
        raise bad(f"{where}: datatype {str(datatype)[:20]!r} is not one of {sorted(NUMERIC_INPUTS)}")
    return where, DATATYPES[datatype], math.prod(shape)


def _json_data(data: Any, shape: list[int], datatype: str, where: str) -> np.ndarray:
    try:
        array = as_array(data)
    except ValueError:
        raise bad(f"{where}: data is ragged; send a flat list in row-major order") from None
    if array.size and array.dtype.kind not in "iuf":
        raise bad(f"{where}: data must hold numbers only")
    # np.asarray reads true as 1 among numbers, and V2 keeps booleans for BOOL tensors.
    if holds_booleans(data):
        raise bad(f"{where}: data must hold numbers only, found booleans")
    if array.size != math.prod(shape):
        raise bad(f"{where}: data has {array.size} values, shape {shape} needs {math.prod(shape)}")
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu" and array.size:
        array = check_integers(array, data, datatype, where)
    # Floats beyond the datatype's range become inf, refused with the other non-finite values downstream.
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype).reshape(shape)


def _json_texts(data: Any, shape: list[int], where: str) -> np.ndarray:
    """A BYTES tensor's JSON data: strings, flat in row-major order (or nested as the shape)."""
    flat = _flattened(data, where)
    if len(flat) != math.prod(shape):
        raise bad(f"{where}: data has {len(flat)} values, shape {shape} needs {math.prod(shape)}")
    return np.array(flat, dtype=object).reshape(shape)


def _flattened(data: Any, where: str) -> list[str]:
    items = data if isinstance(data, list) else [data]
    if items and all(isinstance(item, list) for item in items):
        items = [value for item in items for value in (item if isinstance(item, list) else [item])]
    if not all(isinstance(item, str) for item in items):
        raise bad(f"{where}: a BYTES tensor's data must hold strings")
    return items


def texts_from_bytes(blob: bytes, count: int, where: str) -> np.ndarray:
    """`count` BYTES elements in the binary layout (each its 4-byte little-endian length, then its bytes), as
    text: the inverse of `bytes_tensor`."""
    items: list[str] = []
    position = 0
    while position < len(blob) and len(items) < count:
        end = position + 4 + int.from_bytes(blob[position : position + 4], "little")
        if position + 4 > len(blob) or end > len(blob):
            break
        items.append(text(blob[position + 4 : end], where))
        position = end
    if len(items) != count or position != len(blob):
        raise bad(f"{where}: its {len(blob)} bytes do not hold {count} BYTES elements (a 4-byte length, then bytes)")
    return np.array(items, dtype=object)


def text(value: bytes, where: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise bad(f"{where}: a BYTES element is not UTF-8 text") from None


def check_integers(array: np.ndarray, data: Any, datatype: str, where: str) -> np.ndarray:
    """The array, refusing what astype would silently wrap (300 as UINT8 is 44) or truncate (1.5 as INT32
    is 1). Integers past 2^53, which np.asarray rounds to floats, are checked as the exact ints JSON gave."""
    info = np.iinfo(DATATYPES[datatype])
    if array.dtype.kind == "f" and float(np.abs(array).max()) >= 2.0**53:
        array = np.asarray(data, dtype=object)
        values = array.ravel().tolist()
        whole = all(type(value) is int or value.is_integer() for value in values)
        low, high = min(values), max(values)
    else:
        whole = array.dtype.kind in "iu" or bool(np.all(np.floor(array) == array))
        # .item(): Python compares its ints and floats exactly, where numpy would round 2**64 - 1 to a float.
        low, high = array.min().item(), array.max().item()
    if not whole or low < info.min or high > info.max:
        raise bad(f"{where}: {datatype} data must be whole numbers from {info.min} to {info.max}")
    return array


def _outputs(raw: Any) -> dict[str, bool | None]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise bad("outputs must be a list of {name, parameters}")
    outputs: dict[str, bool | None] = {}
    for output in raw:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise bad("each requested output needs a name")
        binary = _parameters(output, f"output {output['name'][:60]!r}").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise bad(f"output {output['name'][:60]!r}: binary_data must be true or false")
        outputs[output["name"]] = binary
    return outputs


def bytes_tensor(array: np.ndarray) -> bytes:
    """BYTES in the binary extension: each element as its 4-byte little-endian length, then its bytes."""
    parts = [str(item).encode() for item in array.ravel()]
    return b"".join(len(part).to_bytes(4, "little") + part for part in parts)


def render_response(
    request: InferRequest, model: str, version: int, outputs: dict[str, np.ndarray], parameters: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON alone, or JSON then the binary outputs' bytes."""
    tensors, blobs = [], []
    for name, array in outputs.items():
        tensor: dict[str, Any] = {"name": name, "datatype": OUTPUT_DATATYPES[array.dtype], "shape": list(array.shape)}
        if request.binary(name):
            blob = bytes_tensor(array) if array.dtype == object else np.ascontiguousarray(array).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.ravel().tolist() if array.dtype == object else np.ascontiguousarray(array).ravel()
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id is not None:
        document["id"] = request.id
    document |= {"parameters": parameters, "outputs": tensors}
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *blobs]), headers
