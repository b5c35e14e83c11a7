"""The activation functions compared in the ELU paper, one registry by name.

Each is a real ``torch.nn`` module (``nn.ELU``, ``nn.ReLU``, ...) rather than a
lambda, so exporters see the operator they must translate (an ``ELU`` module
becomes ONNX ``Elu`` or the ELU plugin op) and its ``alpha`` travels with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from elunet.errors import ElunetError


class SReLU(nn.Module):
    """Shifted ReLU, max(-1, x): the paper's SReLU baseline (a ReLU moved down by 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clamp keeps NaN as NaN (torch.maximum would too) and exports as ONNX Clip.
        return torch.clamp(x, min=-1.0)


@dataclass(frozen=True)
class Activation:
    name: str
    make: Callable[[float | None], nn.Module]
    default_alpha: float | None  # None: the activation has no alpha to set
    description: str


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("elu", lambda alpha: nn.ELU(alpha=alpha), 1.0, "x if x > 0 else alpha*(exp(x)-1)"),
        Activation("relu", lambda _: nn.ReLU(), None, "max(0, x)"),
        Activation("lrelu", lambda _: nn.LeakyReLU(negative_slope=0.1), None, "x if x > 0 else 0.1*x"),
        Activation("srelu", lambda _: SReLU(), None, "max(-1, x)"),
        Activation("celu", lambda alpha: nn.CELU(alpha=alpha), 1.0, "max(0,x) + min(0, alpha*(exp(x/alpha)-1))"),
        Activation("selu", lambda _: nn.SELU(), None, "1.0507*ELU(x, alpha=1.6733) (fixed constants)"),
    )
}

ACTIVATION_MODULES = (nn.ELU, nn.ReLU, nn.LeakyReLU, SReLU, nn.CELU, nn.SELU)


def resolve_alpha(name: str, alpha: float | None) -> float | None:
    """The alpha a model with this activation uses: the given one, the default, or None."""
    act = get_activation(name)
    if act.default_alpha is None:
        if alpha is not None:
            raise ElunetError(
                f"activation {name!r} has no alpha parameter, but alpha={alpha} was given",
                hint="--alpha applies to: " + ", ".join(a.name for a in ACTIVATIONS.values() if a.default_alpha is not None),
            )
        return None
    alpha = act.default_alpha if alpha is None else float(alpha)
    if not alpha > 0:
        raise ElunetError(f"alpha must be > 0, got {alpha}", hint="the paper uses alpha = 1.0")
    return alpha


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ElunetError(f"unknown activation {name!r}", hint=f"choose one of: {', '.join(ACTIVATIONS)}") from None


def make_activation(name: str, alpha: float | None = None) -> nn.Module:
    """A fresh activation module; alpha is checked and defaulted by :func:`resolve_alpha`."""
    return get_activation(name).make(resolve_alpha(name, alpha))
