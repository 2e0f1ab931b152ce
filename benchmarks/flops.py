"""Multiply-accumulates of the default pack's ONNX graphs, counted from the graphs themselves.

    python -m benchmarks.flops

Shapes come from ONNX shape inference with the input fixed (YuNet at 640×480, as the
pipeline feeds a 640×480 capture; SFace at 1×3×112×112). Counted: Conv (output elements ×
input channels per group × kernel area), Gemm and MatMul (M×N×K). Element-wise ops,
pooling and activations are left out (a few percent at most for these networks). FLOPs are
2 × MACs. Divided by a measured p50, this gives the GFLOP/s a stage reaches.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import onnx
from onnx import shape_inference

from models.prepare import prepare_default_pack


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for value in (
        *inferred.graph.value_info,
        *inferred.graph.input,
        *inferred.graph.output,
    ):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count_macs(path: Path, input_shape: list[int]) -> dict[str, Any]:
    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    for dim, size in zip(graph_input.type.tensor_type.shape.dim, input_shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = size
    shapes = _shapes(model)
    macs = 0
    by_op: dict[str, int] = {}
    unknown = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0])
        if not out or 0 in out:
            unknown += 1
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = shapes[node.input[1]]  # (Cout, Cin/group, kH, kW)
            n = math.prod(out) * math.prod(weight[1:])
        else:
            a = shapes.get(node.input[0], [])
            n = math.prod(out) * (a[-1] if a else 0)
        macs += n
        by_op[node.op_type] = by_op.get(node.op_type, 0) + n
    return {
        "file": path.name,
        "input": input_shape,
        "macs": macs,
        "gflops": round(2 * macs / 1e9, 4),
        "by_op_macs": by_op,
        "nodes_without_shape": unknown,
    }


def pack_flops(models_dir: Path | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pack = prepare_default_pack(models_dir or Path(tmp))
        return {
            "model_id": pack.model_id,
            "detector_640x480": count_macs(pack.detector_path(), [1, 3, 480, 640]),
            "recognizer_112x112": count_macs(pack.recognizer_path(), [1, 3, 112, 112]),
        }


def main() -> None:
    figures = pack_flops()
    for name in ("detector_640x480", "recognizer_112x112"):
        f = figures[name]
        print(f"{name}: {f['gflops']} GFLOP ({f['macs'] / 1e6:.1f} M MACs) {f['by_op_macs']}")


if __name__ == "__main__":
    main()
