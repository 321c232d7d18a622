"""Benchmark the training engine against a bare loop, and inference of the default model.

Measures, in one process on the same machine:
1. engine: samples/s of ``dataeng.engine.learn.train.train`` on a real workspace (registry
   rows, PNG files in the store, albumentations, DataLoader workers), taken from the
   last epoch (the first pays for worker start-up and kernel warm-up);
2. bare: samples/s of the same model, batch and image size on in-memory tensors;
3. their ratio (target >= 0.9: the data pipeline hides behind compute);
4. peak memory (max RSS of this process and of its children, the loader workers);
5. inference images/s of the default model at 256x256.

Usage::

    .venv/bin/python scripts/bench_train.py [--images 32] [--size 256] [--batch-size 8]
        [--workers 2] [--epochs 2] [--arch unet] [--encoder resnet18] [--semi unimatch] [--json]

With ``--semi``, the registry also holds ``--images`` unlabelled train images, each step draws an
unlabelled batch as large as the labelled one, and samples/s count both, in the engine and in the
bare loop (which runs the engine's semi-supervised step on in-memory tensors).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_registry(root: Path, n: int, size: int, unlabelled: int = 0) -> object:
    """A workspace with ``n`` labelled train images (synthetic portraits) stored like ingest would,
    and ``unlabelled`` more train images without labels."""
    import numpy as np

    from dataeng.annotation.masks import alpha_to_mask
    from dataeng.workspace import Workspace
    from tests.factories import add_image, add_label, blob_portrait

    try:
        from dataeng.engine.synth import render
    except ImportError:  # synth.py not there yet: the factory's blobs cost the loader the same
        render = blob_portrait
    ws = Workspace.init(root / "ws")
    with ws.session() as session:
        for i in range(n):
            image, alpha = render(np.random.default_rng([0, i]), size, size)
            row = add_image(session, ws, image, "train", f"bench_{i}")
            add_label(session, ws, row.id, alpha_to_mask(alpha))
        for i in range(unlabelled):
            image, _ = render(np.random.default_rng([1, i]), size, size)
            add_image(session, ws, image, "train", f"bench_u{i}")
    return ws


def bare_loop(arch: str, encoder: str, n: int, size: int, batch: int, steps: int, seed: int,
              semi: str = "none") -> float:
    """Samples/s of the same model and optimiser on in-memory tensors (after 2 warm-up steps).

    With ``semi``, each step is the engine's semi-supervised step (:func:`semi_step_loss`: the same
    forward and backward passes) on a labelled and an equally large unlabelled in-memory batch, and
    both count as samples.
    """
    import torch

    from dataeng.engine.learn.semi import SemiSettings, UnlabelledBatch, semi_step_loss
    from dataeng.models.factory import build_model
    from dataeng.models.losses import segmentation_loss
    from dataeng.models.perturb import SemiNet

    torch.manual_seed(seed)
    model = build_model(arch, encoder, 1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = (torch.rand(batch, size, size, generator=g) > 0.5).long()
    settings = None if semi == "none" else SemiSettings(semi, 0.95, 1.0, 0.5, 0.5, 0.5, 1.0)
    net = SemiNet(model)
    views = settings.views if settings else 0
    u = UnlabelledBatch(torch.randn(batch, 3, size, size, generator=g),
                        torch.randn(views, batch, 3, size, size, generator=g),
                        torch.rand(views, batch, size, size, generator=g) > 0.7,
                        torch.ones(batch, size, size, dtype=torch.bool))

    def step() -> None:
        if settings is None:
            loss = segmentation_loss(model(x), y)
        else:
            loss = semi_step_loss(net, x, lambda logits: segmentation_loss(logits, y), u, settings).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * (2 if settings else 1) / (time.perf_counter() - start)


def inference(arch: str, encoder: str, size: int, batch: int, batches: int) -> float:
    """Images/s of the model in eval mode at ``size`` x ``size``."""
    import torch

    from dataeng.models.factory import build_model

    model = build_model(arch, encoder, 1).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--infer-batches", type=int, default=5)
    parser.add_argument("--semi", choices=("none", "fixmatch", "unimatch"), default="none",
                        help="train semi-supervised, with as many unlabelled train images as labelled ones")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from dataeng.engine.learn.train import train

    steps = -(-args.images // args.batch_size)
    # The bare loop runs before and after the engine; their mean cancels slow drifts of a shared machine.
    bare_before = bare_loop(args.arch, args.encoder, args.images, args.size, args.batch_size, steps, 0, args.semi)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ws = make_registry(Path(tmp), args.images, args.size, args.images if args.semi != "none" else 0)
        setup_s = time.perf_counter() - t0
        session = ws.new_session()  # type: ignore[attr-defined]
        try:
            result = train(ws, session, {  # type: ignore[arg-type]
                "arch": args.arch, "encoder": args.encoder, "epochs": args.epochs, "batch_size": args.batch_size,
                "image_size": (args.size, args.size), "num_workers": args.workers, "device": "cpu",
                "semi": args.semi,
            })
        finally:
            session.close()
    engine = result.history[-1]["samples_per_s"]
    bare_after = bare_loop(args.arch, args.encoder, args.images, args.size, args.batch_size, steps, 0, args.semi)
    bare = (bare_before + bare_after) / 2
    infer = inference(args.arch, args.encoder, 256, args.batch_size, args.infer_batches)
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures = {
        "device": "cpu", "torch_threads": torch.get_num_threads(), "images": args.images, "size": args.size,
        "batch_size": args.batch_size, "workers": args.workers, "model": f"{args.arch}/{args.encoder}",
        "semi": args.semi,
        "engine_samples_per_s": round(engine, 2), "bare_samples_per_s": round(bare, 2),
        "bare_before_after": [round(bare_before, 2), round(bare_after, 2)],
        "ratio": round(engine / bare, 3), "inference_images_per_s_256": round(infer, 2),
        "peak_rss_mib": round(peak_self, 1), "peak_worker_rss_mib": round(peak_children, 1),
        "registry_setup_s": round(setup_s, 2),
        "epoch_history_samples_per_s": [round(h["samples_per_s"], 2) for h in result.history],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:32s} {value}")


if __name__ == "__main__":
    main()
