"""Input normalization as the first module of every network.

The network's input is pixels in [0, 1], NCHW; whatever the training recipe
does to them (per-channel mean/std, or the paper's global contrast
normalization + ZCA whitening for CIFAR) happens here, with the parameters
fitted on the training split stored as buffers. Buffers are saved with the
weights and traced into an exported graph, so training and serving can never
normalize differently.
"""

from __future__ import annotations

import torch
from torch import nn

from elunet.errors import ElunetError

# pylearn2's CIFAR recipe, used by the paper: GCN with scale 55, ZCA with a 0.1 eigenvalue bias.
GCN_SCALE = 55.0
GCN_MIN_DIVISOR = 1e-8
ZCA_FILTER_BIAS = 0.1


class MeanStd(nn.Module):
    """(x - mean) / std per channel."""

    kind = "meanstd"

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    @torch.no_grad()
    def fit_(self, images: torch.Tensor) -> "MeanStd":
        """Set mean/std from training images [N, C, H, W] in [0, 1]."""
        channels = images.transpose(0, 1).reshape(images.shape[1], -1).double()
        self.mean.copy_(channels.mean(1))
        self.std.copy_(channels.std(1).clamp_min(1e-6))
        return self


class GcnZca(nn.Module):
    """Global contrast normalization of each image, then ZCA whitening (the paper's CIFAR preprocessing)."""

    kind = "gcn+zca"

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        dim = channels * height * width
        self.register_buffer("zca_mean", torch.zeros(dim))
        self.register_buffer("zca_matrix", torch.eye(dim))

    @staticmethod
    def contrast_normalize(x: torch.Tensor) -> torch.Tensor:
        """Each image minus its own mean, divided by its own standard deviation, times GCN_SCALE."""
        flat = x.flatten(1)
        centered = flat - flat.mean(1, keepdim=True)
        divisor = centered.std(1, keepdim=True).clamp_min(GCN_MIN_DIVISOR) / GCN_SCALE
        return centered / divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = (self.contrast_normalize(x) - self.zca_mean) @ self.zca_matrix
        return white.reshape(x.shape)

    @torch.no_grad()
    def fit_(self, images: torch.Tensor) -> "GcnZca":
        """Fit the ZCA transform on contrast-normalized training images [N, C, H, W] in [0, 1]."""
        flat = self.contrast_normalize(images.double())
        mean = flat.mean(0)
        centered = flat - mean
        cov = centered.T @ centered / flat.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)
        # W = U diag(1/sqrt(lambda + bias)) U^T: symmetric, so rows and columns mean the same thing.
        matrix = (eigvecs / torch.sqrt(eigvals.clamp_min(0) + ZCA_FILTER_BIAS)) @ eigvecs.T
        self.zca_mean.copy_(mean)
        self.zca_matrix.copy_(matrix)
        return self


NORMALIZATIONS = {MeanStd.kind: MeanStd, GcnZca.kind: GcnZca}


def make_normalization(kind: str, channels: int, height: int, width: int) -> nn.Module:
    """An unfitted normalization module of the given kind for inputs [C, H, W]."""
    if kind == MeanStd.kind:
        return MeanStd(channels)
    if kind == GcnZca.kind:
        return GcnZca(channels, height, width)
    raise ElunetError(f"unknown normalization {kind!r}", hint=f"choose one of: {', '.join(NORMALIZATIONS)}")


def fit_normalization(kind: str, images: torch.Tensor) -> nn.Module:
    """A normalization module of ``kind`` fitted on training images [N, C, H, W] (uint8 or float in [0, 1])."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    _, c, h, w = images.shape
    return make_normalization(kind, c, h, w).fit_(images)
