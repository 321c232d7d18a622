"""Feature perturbation for UniMatch: the same network, with a second decoder pass on dropped-out features.

UniMatch's feature-perturbed stream runs the decoder on the encoder's features after channel
dropout (``Dropout2d``) and asks for the weak view's confident prediction there too. Here one
encoder pass serves both streams: the decoder sees the clean features of the whole batch and the
dropped-out features of its last images, concatenated, so the perturbed stream costs one
decoder pass and no second encoder pass.

The wrapper owns no weights of its own: its state is the wrapped model's, so checkpoints,
evaluation and export keep using the plain smp model.

Example::

    net = FeaturePerturbed(model, dropout=0.5)
    logits, perturbed = net(torch.cat([labelled, weak]), perturb_last=len(weak))
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


class FeaturePerturbed(nn.Module):
    """An smp model (``encoder``, ``decoder``, ``segmentation_head``) with a feature-perturbed stream."""

    def __init__(self, model: nn.Module, dropout: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout2d(dropout)
        forward = model.decoder.forward  # type: ignore[union-attr]
        # smp < 0.5 decoders take the features as separate arguments, later ones as a list.
        self._star = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(forward).parameters.values())

    def _decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        decoder = self.model.decoder
        out = decoder(*features) if self._star else decoder(features)  # type: ignore[operator]
        return self.model.segmentation_head(out)  # type: ignore[operator]

    def forward(self, x: torch.Tensor, perturb_last: int = 0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The model's logits; with ``perturb_last`` = k > 0, also the logits of the last k images
        decoded from dropped-out features, as ``(logits, perturbed)``."""
        if perturb_last <= 0:
            return self.model(x)
        features = self.model.encoder(x)  # type: ignore[operator]
        n = x.shape[0]
        # features[0] is the input itself in smp encoders: only the learned stages are dropped out.
        joined = [torch.cat([f, f[n - perturb_last:] if i == 0 else self.dropout(f[n - perturb_last:])])
                  for i, f in enumerate(features)]
        logits = self._decode(joined)
        return logits[:n], logits[n:]
