"""Batch augmentation on uint8 tensors: random crops from zero-padded images and horizontal flips.

Done on whole batches with index arithmetic (no per-image Python loop, no
PIL), so it costs a few percent of a training step on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from elunet.train.data import Augmentation


def augment(images: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to ``aug.pad`` pixels (zeros fill in) and mirror about half of them."""
    n, c, h, w = images.shape
    if aug.pad > 0:
        p = aug.pad
        padded = F.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), generator=generator)
        # each image's own h x w window: out[i, ch, y, x] = padded[i, ch, dy_i + y, dx_i + x]
        batch = torch.arange(n).view(n, 1, 1, 1)
        channel = torch.arange(c).view(1, c, 1, 1)
        images = padded[batch, channel, dy + torch.arange(h).view(1, 1, h, 1), dx + torch.arange(w).view(1, 1, 1, w)]
    if aug.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flip.view(n, 1, 1, 1), images.flip(3), images)
    return images
