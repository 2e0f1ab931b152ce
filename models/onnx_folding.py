"""Fold constant weight-decoding subgraphs of an ONNX model into float32 initializers.

OpenCV Zoo ships YuNet and SFace as "int8 block-quantized" ONNX files: every weight is an int8
initializer decoded at run time by a ``DequantizeLinear`` node with a ``block_size`` attribute,
often followed by a ``Reshape`` to the convolution's kernel shape. Stock onnxruntime refuses
those nodes when the scale is per tensor (``block_size must be 0 for per-tensor quantization``),
so we evaluate them once here, with numpy, and store the results as plain float32 weights.
The arithmetic is the ONNX definition: ``y = (x - zero_point) * scale`` with the scale and zero
point repeated ``block_size`` times along ``axis``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

Array = NDArray[np.generic]


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _expand_blocks(
    param: NDArray[np.float32], axis: int, block_size: int, length: int
) -> NDArray[np.float32]:
    expanded: NDArray[np.float32] = np.repeat(param, block_size, axis=axis)
    return expanded.take(np.arange(length), axis=axis)


def _dequantize(node: onnx.NodeProto, inputs: list[Array]) -> Array:
    quantized = inputs[0].astype(np.float32)
    scale = inputs[1].astype(np.float32)
    zero_point = inputs[2].astype(np.float32) if len(inputs) > 2 else np.zeros_like(scale)
    if scale.size == 1:  # per tensor, whatever block_size says
        return ((quantized - zero_point.reshape(())) * scale.reshape(())).astype(np.float32)
    axis = _attribute(node, "axis", 1) % quantized.ndim
    block_size = _attribute(node, "block_size", 0)
    if block_size == 0:  # per axis: one scale per slice along `axis`
        shape = [1] * quantized.ndim
        shape[axis] = -1
        return ((quantized - zero_point.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
    length = quantized.shape[axis]
    block_scale = _expand_blocks(scale, axis, block_size, length)
    block_zero = _expand_blocks(zero_point, axis, block_size, length)
    return ((quantized - block_zero) * block_scale).astype(np.float32)


def _reshape(_node: onnx.NodeProto, inputs: list[Array]) -> Array:
    return inputs[0].reshape([int(d) for d in inputs[1]])


_FOLDERS: dict[str, Callable[[onnx.NodeProto, list[Array]], Array]] = {
    "DequantizeLinear": _dequantize,
    "Reshape": _reshape,
}


def fold_constant_weights(model: onnx.ModelProto) -> int:
    """Fold DequantizeLinear/Reshape nodes whose inputs are all constants, in place.

    Also drops graph inputs that nothing consumes or that merely shadow an initializer (old
    exporters listed weights as inputs, which stops onnxruntime from treating them as
    constants). Returns the number of nodes folded.
    """
    graph = model.graph
    constants: dict[str, Array] = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer
    }
    kept: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:  # ONNX graphs are stored in topological order
        fold = _FOLDERS.get(node.op_type)
        if fold is not None and all(name in constants for name in node.input if name):
            constants[node.output[0]] = fold(node, [constants[n] for n in node.input if n])
            folded += 1
        else:
            kept.append(node)

    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(
        numpy_helper.from_array(np.ascontiguousarray(value), name)
        for name, value in sorted(constants.items())
        if name in used
    )
    real_inputs = [i for i in graph.input if i.name in used and i.name not in constants]
    del graph.input[:]
    graph.input.extend(real_inputs)
    return folded


def expand_prelu(model: onnx.ModelProto) -> int:
    """Rewrite each ``PRelu(x, slope)`` as ``Relu(x) - slope * Relu(-x)``, in place.

    The same function: each output is x or one rounded product slope·x, as before. How it is
    spelled decides its speed on onnxruntime's CPU provider, which runs convolutions in a
    blocked channel layout (NCHWc) and converts every tensor an operator outside that layout
    reads back to plain NCHW first. A per-channel slope (SFace's) is therefore written as two
    1×1 depthwise convolutions, weights -1 and -slope: with the Relus and the Add they stay in
    the blocked layout, the second Relu and the Add fuse into the convolutions, and no
    reorders are left. The ``Neg``/``Mul``/``Sub`` spelling (still used for a slope of any
    other shape) left a reorder out and back around each PRelu: 6 of SFace's 38 ms on one
    thread, and the elementwise ops another 9 (26 ms now). Returns the number of nodes rewritten.
    """
    constants = {init.name: init for init in model.graph.initializer}
    rewritten: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    count = 0
    for node in model.graph.node:
        if node.op_type != "PRelu":
            rewritten.append(node)
            continue
        count += 1
        x, slope_name = node.input
        y = node.output[0]
        rewritten.append(onnx.helper.make_node("Relu", [x], [f"{y}/positive"]))
        slope = constants.get(slope_name)
        shape = tuple(slope.dims) if slope is not None else ()
        if slope is not None and len(shape) == 3 and shape[1:] == (1, 1):
            channels = shape[0]
            values = numpy_helper.to_array(slope).astype(np.float32).reshape(channels, 1, 1, 1)
            weights += [
                numpy_helper.from_array(np.full_like(values, -1.0), f"{y}/minus_one"),
                numpy_helper.from_array(-values, f"{y}/minus_slope"),
            ]
            depthwise = {"group": channels, "kernel_shape": [1, 1]}
            negate = onnx.helper.make_node(
                "Conv", [x, f"{y}/minus_one"], [f"{y}/negated"], **depthwise
            )
            scale = onnx.helper.make_node(
                "Conv", [f"{y}/negative", f"{y}/minus_slope"], [f"{y}/scaled"], **depthwise
            )
            combine = onnx.helper.make_node("Add", [f"{y}/scaled", f"{y}/positive"], [y])
        else:
            negate = onnx.helper.make_node("Neg", [x], [f"{y}/negated"])
            scale = onnx.helper.make_node("Mul", [f"{y}/negative", slope_name], [f"{y}/scaled"])
            combine = onnx.helper.make_node("Sub", [f"{y}/positive", f"{y}/scaled"], [y])
        relu = onnx.helper.make_node("Relu", [f"{y}/negated"], [f"{y}/negative"])
        rewritten += [negate, relu, scale, combine]
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    model.graph.initializer.extend(weights)
    return count


def make_batch_dynamic(model: onnx.ModelProto, dim_name: str = "batch") -> None:
    """Let the first dimension of every graph input and output vary (batched embedding)."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = dim_name
