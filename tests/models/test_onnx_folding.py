"""Graph rewrites of `models.onnx_folding` compute exactly what the original graphs did."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.onnx_folding import expand_prelu, fold_constant_weights
from models.session import create_session


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return np.asarray(create_session(model.SerializeToString()).run(None, {"x": x})[0])


def _prelu_model(slope: np.ndarray, shape: list[int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("PRelu", ["x", "slope"], ["y"])],
        "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(slope, "slope")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("channels", [4, 64])  # 64: wide enough for the blocked (NCHWc) layout
def test_expand_prelu_computes_prelu(channels: int) -> None:
    rng = np.random.default_rng(3)
    # SFace's slopes run from below 0 to above 1.
    slope = rng.uniform(-0.8, 1.12, channels).astype(np.float32).reshape(channels, 1, 1)
    slope[:2] = [[[0.0]], [[0.25]]]
    shape = [2, channels, 7, 9]
    model = _prelu_model(slope, shape)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, 1e-30]
    before = _run(model, x)
    assert expand_prelu(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu", "Conv", "Relu", "Conv", "Add"]
    onnx.checker.check_model(model)
    after = _run(model, x)
    # Each output is x itself or one rounded product slope·x, as in PRelu.
    np.testing.assert_array_equal(after, np.where(x > 0, x, slope * x))
    np.testing.assert_array_equal(after, before)


def test_expand_prelu_with_a_shared_slope_uses_elementwise_ops() -> None:
    slope = np.array([0.25], np.float32)
    model = _prelu_model(slope, [1, 3, 4, 4])
    x = np.random.default_rng(4).standard_normal((1, 3, 4, 4)).astype(np.float32)
    before = _run(model, x)
    assert expand_prelu(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu", "Neg", "Relu", "Mul", "Sub"]
    np.testing.assert_array_equal(_run(model, x), before)


def test_fold_blocked_dequantize_linear() -> None:
    """y = (q - zero_point) * scale, with scale and zero point repeated per block of 2."""
    q = np.array([[1, 2, 3, 4, 5]], np.int8)
    scale = np.array([[0.5, 2.0, 10.0]], np.float32)
    zero = np.array([[1, 0, 5]], np.int8)
    graph = helper.make_graph(
        [
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=1, block_size=2),
            helper.make_node("Add", ["x", "w"], ["y"]),
        ],
        "dq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [
            numpy_helper.from_array(q, "q"),
            numpy_helper.from_array(scale, "s"),
            numpy_helper.from_array(zero, "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert fold_constant_weights(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add"]
    folded = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(folded["w"], [[0.0, 0.5, 6.0, 8.0, 0.0]])
