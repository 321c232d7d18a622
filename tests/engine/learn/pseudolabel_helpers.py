"""Teachers for the pseudolabel and round tests: tiny models whose output is set by hand."""

from __future__ import annotations

from pathlib import Path

from dataeng.db.schema import Run, utcnow
from dataeng.workspace import Workspace

TINY = {"arch": "unet", "encoder": "tu-mobilenetv3_small_050", "encoder_depth": 3, "image_size": [64, 64]}


def save_constant_teacher(path: Path, logit: float, classes: list[str] | None = None, arch: str = "unet",
                          meta_arch: str | None = None) -> Path:
    """A tiny model predicting the same logit everywhere (sigmoid(logit) = P(person)).

    ``meta_arch`` writes another architecture into the metadata than the weights have.
    """
    import torch

    from dataeng.models.checkpoint import save_checkpoint
    from dataeng.models.factory import build_model

    classes = classes or ["person"]
    torch.manual_seed(0)
    model = build_model(arch, TINY["encoder"], len(classes), encoder_depth=3)
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(logit)
    meta = {**TINY, "arch": meta_arch or arch, "classes": classes, "epoch": 1}
    save_checkpoint(path, model, meta)
    return path


def add_teacher_run(ws: Workspace, logit: float, val_miou: float = 0.5, round: int | None = 0) -> int:
    """Register a finished train run whose checkpoint is a constant teacher; returns its id."""
    with ws.session() as s:
        run = Run(kind="train", status="finished", round=round, config={"arch": "unet", "encoder": TINY["encoder"]},
                  metrics={"val": {"miou": val_miou}}, finished_at=utcnow())
        s.add(run)
        s.flush()
        rel = f"runs/{run.id}/checkpoint.pt"
        save_constant_teacher(ws.root / rel, logit)
        run.checkpoint_path = rel
        return run.id
