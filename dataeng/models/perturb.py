"""The network a semi-supervised step calls: clean, strong and feature-perturbed logits in one forward.

UniMatch's feature-perturbed stream runs the decoder on the encoder's features after channel
dropout (``Dropout2d``) and asks for the weak view's confident prediction there too. Here one
encoder pass serves both streams: the decoder sees the clean features of the whole batch and the
dropped-out features of its last images, concatenated, so the perturbed stream costs one
decoder pass and no second encoder pass.

The strong views go through the network in a second pass of their own (their BatchNorm
statistics stay apart from the clean batch's, as in UniMatch), but inside the same ``forward``
call: DDP allows one forward per backward.

The wrapper owns no weights of its own: its state is the wrapped model's, so checkpoints,
evaluation and export keep using the plain smp model.

Example::

    net = SemiNet(model, dropout=0.5)
    logits, perturbed, strong = net(torch.cat([labelled, weak]), perturb_last=len(weak), strong=views)
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


class SemiNet(nn.Module):
    """An smp model (``encoder``, ``decoder``, ``segmentation_head``) with a feature-perturbed stream
    and a second pass for strong views."""

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

    def forward(self, x: torch.Tensor, perturb_last: int = 0, strong: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The model's logits of ``x``. With ``perturb_last`` = k > 0 or ``strong``, the tuple
        ``(logits, perturbed, strong logits)``: ``perturbed`` = the last k images of ``x`` decoded
        from dropped-out features (None when k = 0); ``strong logits`` = the model's on ``strong``."""
        if perturb_last <= 0 and strong is None:
            return self.model(x)
        perturbed = None
        if perturb_last > 0:
            features = self.model.encoder(x)  # type: ignore[operator]
            n = x.shape[0]
            # features[0] is the input itself in smp encoders: only the learned stages are dropped out.
            joined = [torch.cat([f, f[n - perturb_last:] if i == 0 else self.dropout(f[n - perturb_last:])])
                      for i, f in enumerate(features)]
            both = self._decode(joined)
            logits, perturbed = both[:n], both[n:]
        else:
            logits = self.model(x)
        return logits, perturbed, None if strong is None else self.model(strong)
