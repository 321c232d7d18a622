"""A tiny model must overfit 8 images: the loss, the model and the metrics fit together."""

from __future__ import annotations

import numpy as np
import torch

from dataeng.models.factory import build_model
from dataeng.models.inference import normalize
from dataeng.models.losses import segmentation_loss
from dataeng.models.metrics import score_image
from tests.factories import blob_portrait


def test_overfits_eight_images():
    from dataeng.annotation.masks import alpha_to_mask

    torch.manual_seed(0)
    pairs = [blob_portrait(np.random.default_rng([0, i]), 64, 64) for i in range(8)]
    x = normalize(torch.from_numpy(np.stack([p[0] for p in pairs]).transpose(0, 3, 1, 2).copy()))
    masks = np.stack([alpha_to_mask(p[1]) for p in pairs])
    y = torch.from_numpy(masks).long()
    model = build_model("unet", "tu-mobilenetv3_small_050", 1, encoder_depth=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(45):
        loss = segmentation_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = (torch.sigmoid(model(x))[:, 0] >= 0.5).numpy().astype(np.uint8)
    ious = [score_image(p, m, 1)[0].iou for p, m in zip(pred, masks, strict=True)]
    assert min(ious) > 0.9, ious
