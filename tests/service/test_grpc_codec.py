"""service.grpc.codec: typed contents read and written as fast as raw ones, with the same values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.errors import ServiceError
from service.grpc import open_inference_pb2 as pb
from service.grpc.codec import SLICE, parse_request, render_response, slow_to_parse
from service.v2_codec import InferRequest

FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "UINT8": "uint_contents"}


def typed(datatype: str, values: np.ndarray) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=list(values.shape))
    getattr(tensor.contents, FIELDS[datatype]).extend(values.ravel().tolist())
    return pb.ModelInferRequest(inputs=[tensor])


def raw(datatype: str, values: np.ndarray) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=list(values.shape))
    return pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[values.tobytes()])


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40)))
def test_typed_floats_read_as_their_raw_bytes(values: np.ndarray) -> None:
    read = parse_request(typed("FP32", values)).inputs["x"]
    np.testing.assert_array_equal(read, parse_request(raw("FP32", values)).inputs["x"])
    np.testing.assert_array_equal(read, values)


@pytest.mark.parametrize(("datatype", "dtype"), [("FP64", np.float64), ("INT64", np.int64), ("UINT8", np.uint8)])
def test_other_typed_contents_read_exactly(datatype: str, dtype: type) -> None:
    values = np.arange(-3 if datatype != "UINT8" else 0, 2 * SLICE + 7).astype(dtype).reshape(1, -1)
    np.testing.assert_array_equal(parse_request(typed(datatype, values)).inputs["x"], values)
    assert slow_to_parse(typed(datatype, values)) == (datatype != "FP64")


def test_typed_integers_out_of_their_datatypes_range_are_refused() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="UINT8", shape=[1, 2])
    tensor.contents.uint_contents.extend([1, 256])
    with pytest.raises(ServiceError, match="whole numbers from 0 to 255"):
        parse_request(pb.ModelInferRequest(inputs=[tensor]))


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(0, 30), st.integers(1, 30))), st.booleans())
def test_outputs_are_written_typed_or_raw_with_the_same_values(values: np.ndarray, as_raw: bool) -> None:
    flags = np.asarray(values > 0).any(axis=1)
    request = InferRequest(None, {}, {}, as_raw)
    answer = render_response(request, "m", 1, {"x_hat": values, "is_anomaly": flags}, {"threshold": 0.5})
    if as_raw:
        x_hat = np.frombuffer(answer.raw_output_contents[0], np.float32)
        flagged = np.frombuffer(answer.raw_output_contents[1], np.bool_)
    else:
        x_hat = np.asarray(answer.outputs[0].contents.fp32_contents, np.float32)
        flagged = np.asarray(answer.outputs[1].contents.bool_contents, np.bool_)
    np.testing.assert_array_equal(x_hat.reshape(values.shape), values)
    np.testing.assert_array_equal(flagged, flags)
    assert list(answer.outputs[0].shape) == list(values.shape)
    assert answer.parameters["threshold"].double_param == 0.5
