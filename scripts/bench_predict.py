"""Benchmark: `dataeng predict` throughput vs. the bare forward pass of the same model.

Usage:
    .venv/bin/python scripts/bench_predict.py [--n 64] [--size 256] [--batch-size 8]
        [--arch unet] [--encoder resnet18] [--as mask] [--threads 0]

For each backend (PyTorch, ONNX Runtime fp32) it measures, in the same process and on
the same model (random weights, the workspace default architecture unless told):

- predict: ``engine.predict.predict()`` (what ``dataeng predict DIR --out OUT`` runs once
  the model is loaded) on N synthetic SIZExSIZE JPEGs: decode, resize, normalise,
  forward, resize back, threshold, PNG write;
- forward: the bare forward pass on already-normalised float tensors of the same batch
  size, i.e. the ceiling predict can approach.

It prints images/s of both and their ratio. Each number is the best of ``--repeat`` runs
(after one warm-up batch), which damps noise from other processes sharing the CPU.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _make_images(folder: Path, n: int, size: int) -> None:
    from dataeng.engine.synth import render

    rng = np.random.default_rng(0)
    for i in range(n):
        image, _ = render(rng, size, size)
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)


def _best_rate(fn, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="images")
    parser.add_argument("--size", type=int, default=256, help="image and model size (multiple of 32)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--as", dest="output", default="mask", choices=["mask", "alpha", "cutout", "overlay"])
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0 = default)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import os

    import torch

    from dataeng.engine.serve.predict import PredictOptions, predict
    from dataeng.models.factory import build_model
    from dataeng.models.inference import IMAGENET_MEAN, IMAGENET_STD, TorchPredictor
    from dataeng.models.onnx import OnnxPredictor, export_onnx, meta_from_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    size, bs = (args.size, args.size), args.batch_size
    work = Path(tempfile.mkdtemp(prefix="bench_predict."))
    try:
        photos = work / "photos"
        photos.mkdir()
        _make_images(photos, args.n, args.size)
        torch.manual_seed(0)
        model = build_model(args.arch, args.encoder, 1).eval()
        meta = meta_from_checkpoint({"arch": args.arch, "encoder": args.encoder, "classes": ["person"],
                                     "image_size": list(size)}, False, IMAGENET_MEAN, IMAGENET_STD)
        export_onnx(model, meta, work / "model.onnx")
        backends = {
            "pytorch": TorchPredictor(model, ["person"], size, torch.device("cpu")),
            "onnxruntime": OnnxPredictor.load(work / "model.onnx", threads=args.threads or None),
        }
        x = torch.randn(bs, 3, *size)
        batches = -(-args.n // bs)
        forwards = {
            "pytorch": lambda: model(x),
            "onnxruntime": lambda: backends["onnxruntime"].session.run(None, {"input": x.numpy()}),
        }
        print(f"{args.arch}/{args.encoder}, {args.n} images {args.size}x{args.size}, batch {bs}, --as "
              f"{args.output}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}")
        print(f"{'backend':<12} {'predict img/s':>14} {'forward img/s':>14} {'ratio':>7}")
        for name, predictor in backends.items():
            options = PredictOptions(output=args.output, batch_size=bs, overwrite=True)
            out = work / f"out_{name}"
            predict(predictor, [photos / "00000.jpg"], out, options)  # warm-up

            def run_predict(predictor=predictor, out=out, options=options) -> None:
                result = predict(predictor, [photos], out, options)
                assert result.written == args.n, result

            with torch.inference_mode():
                forwards[name]()  # warm-up
                fwd = _best_rate(lambda name=name: [forwards[name]() for _ in range(batches)], batches * bs,
                                 args.repeat)
            pred = _best_rate(run_predict, args.n, args.repeat)
            print(f"{name:<12} {pred:>14.1f} {fwd:>14.1f} {pred / fwd:>7.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
