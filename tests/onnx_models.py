"""Tiny hand-built ONNX graphs standing in for third-party person models (onnx.helper, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def brightness_model(path: Path, *, layout: str = "NCHW", output: str = "logits", channels_out: int = 1,
                     nan: bool = False, bad_rank: bool = False, sidecar: dict | None = None) -> Path:
    """A model whose person score is the mean brightness: logit = 10 * (mean(x) - 0.5) over the channels.

    Args:
        layout: the input layout (``NHWC`` models also answer channels-last).
        output: ``logits`` (1 channel, or 2 as (-logit, logit)) or ``probabilities`` (sigmoid applied).
        channels_out: 1 or 2 output channels (the person last).
        nan: multiply the result by NaN (a broken model).
        bad_rank: answer (B, 1) instead of a map: not a segmentation model.
        sidecar: write ``PATH.json`` with this contract.
    """
    import onnx
    from onnx import TensorProto, helper

    axis = 1 if layout == "NCHW" else 3
    shape = ["B", 3, "H", "W"] if layout == "NCHW" else ["B", "H", "W", 3]
    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=1),
             helper.make_node("Sub", ["mean", "half"], ["centred"]),
             helper.make_node("Mul", ["centred", "ten"], ["logit"])]
    last = "logit"
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [axis]),
             helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]),
             helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]),
             helper.make_tensor("minus", TensorProto.FLOAT, [], [-1.0]),
             helper.make_tensor("all_axes", TensorProto.INT64, [3], [1, 2, 3])]
    if channels_out == 2:
        nodes.append(helper.make_node("Mul", [last, "minus"], ["negated"]))
        nodes.append(helper.make_node("Concat", ["negated", last], ["pair"], axis=axis))
        last = "pair"
    if output == "probabilities":
        if channels_out == 2:
            nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=axis))
        else:
            nodes.append(helper.make_node("Sigmoid", [last], ["probs"]))
        last = "probs"
    if nan:
        nodes.append(helper.make_node("Mul", [last, "nan"], ["broken"]))
        last = "broken"
    if bad_rank:
        nodes.append(helper.make_node("ReduceMean", [last, "all_axes"], ["flat"], keepdims=0))
        nodes.append(helper.make_node("Unsqueeze", ["flat", "axes"], ["out_vec"]))
        last = "out_vec"
    nodes.append(helper.make_node("Identity", [last], ["output"]))
    out_shape = ["B", 1] if bad_rank else (["B", channels_out, "H", "W"] if layout == "NCHW"
                                           else ["B", "H", "W", channels_out])
    graph = helper.make_graph(nodes, "brightness", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    if sidecar is not None:
        path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
    return path


CONTRACT = {"input_size": [64, 64], "channels": "RGB", "layout": "NCHW", "scale": 255, "mean": [0, 0, 0],
            "std": [1, 1, 1], "output": "logits"}
"""The sidecar of :func:`brightness_model` with its defaults."""


def bright_and_dark(size: int = 64) -> np.ndarray:
    """A uint8 (2, 3, size, size) batch: one white image, one black."""
    batch = np.zeros((2, 3, size, size), np.uint8)
    batch[0] = 255
    return batch
