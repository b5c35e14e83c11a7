"""The networks: the paper's ELU CNNs, its MNIST MLP, and the default Fashion-MNIST net.

Every network is ``Network(normalize, body)``: the input is pixels in [0, 1],
NCHW; ``normalize`` (see normalize.py) maps them to what ``body`` was trained
on. ``build_model(card)`` is the one way to construct a network, so a
checkpoint is rebuilt from its card plus its weights and nothing else.

Convolutional nets are written as *stacks* the way the paper writes them:
``[(layers, units, receptive field), ...]`` per stack, a 2x2 max-pool (stride 2)
after the pooled stacks, dropout on each stack's last layer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from torch import nn

from elunet.card import ModelCard, Preprocessing
from elunet.errors import ElunetError
from elunet.repository import check_model_name
from elunet.train.activations import make_activation
from elunet.train.normalize import make_normalization

Stack = list[tuple[int, int, int]]  # (layers, units, receptive field)


@dataclass(frozen=True)
class ConvNetSpec:
    stacks: list[Stack]
    dropout: list[float]  # one per stack, on its last layer
    pooled_stacks: int  # a max-pool follows each of the first `pooled_stacks` stacks
    # "conv": the last stack is the classifier (its units become the class count), then
    # global average pooling, as in the paper. "linear": flatten, dropout, one Linear layer.
    head: str
    head_dropout: float = 0.0


# The paper's 11-layer CIFAR-100 net (Sect. 4.3). The last stack's 100 units are the
# classes, so they follow the dataset.
ELU_CIFAR11 = ConvNetSpec(
    stacks=[
        [(1, 192, 5)],
        [(1, 192, 1), (1, 240, 3)],
        [(1, 240, 1), (1, 260, 2)],
        [(1, 260, 1), (1, 280, 2)],
        [(1, 280, 1), (1, 300, 2)],
        [(1, 300, 1)],
        [(1, 100, 1)],
    ],
    dropout=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0],
    pooled_stacks=5,
    head="conv",
)

# The paper's 18-layer net for CIFAR-10/100 (Sect. 4.4). The paper gives no dropout
# schedule for it beyond "like the 11-layer net", so the same per-stack rates are used.
ELU_CIFAR18 = ConvNetSpec(
    stacks=[
        [(1, 384, 3)],
        [(1, 384, 1), (1, 384, 2), (2, 640, 2)],
        [(1, 640, 1), (3, 768, 2)],
        [(1, 768, 1), (2, 896, 2)],
        [(1, 896, 3), (2, 1024, 2)],
        [(1, 1024, 1), (1, 1152, 2)],
        [(1, 1152, 1)],
        [(1, 100, 1)],
    ],
    dropout=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.0],
    pooled_stacks=5,
    head="conv",
)

# The default net: small enough to reach >= 93 % on Fashion-MNIST within minutes on two CPU cores.
FASHION_CNN = ConvNetSpec(
    stacks=[
        [(1, 32, 3)],
        [(2, 64, 3)],
        [(2, 128, 3)],
    ],
    dropout=[0.0, 0.0, 0.0],
    pooled_stacks=3,
    head="linear",
    head_dropout=0.3,
)

MLP_HIDDEN = (128,) * 8  # the paper's MNIST learning-behaviour net


def _same_padding(kernel: int) -> nn.Module | int:
    """Padding that keeps H x W; even kernels (the paper's 2x2) need one more on the right/bottom."""
    if kernel % 2:
        return kernel // 2
    lo = (kernel - 1) // 2
    return nn.ZeroPad2d((lo, kernel - 1 - lo, lo, kernel - 1 - lo))


def _conv_layer(cin: int, cout: int, kernel: int, act: Callable[[], nn.Module] | None, bn: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    padding = _same_padding(kernel)
    if isinstance(padding, nn.Module):
        layers["pad"] = padding
        padding = 0
    layers["conv"] = nn.Conv2d(cin, cout, kernel, padding=padding, bias=not bn)
    if bn:
        layers["bn"] = nn.BatchNorm2d(cout)
    if act is not None:
        layers["act"] = act()
    return nn.Sequential(layers)


def _conv_body(spec: ConvNetSpec, in_shape: tuple[int, int, int], classes: int, act, bn: bool) -> nn.Sequential:
    channels, height, width = in_shape
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    last_stack = len(spec.stacks) - 1
    for s, (stack, p) in enumerate(zip(spec.stacks, spec.dropout)):
        layers = [(units, k) for n, units, k in stack for _ in range(n)]
        is_classifier = spec.head == "conv" and s == last_stack
        for i, (units, k) in enumerate(layers):
            last = i == len(layers) - 1
            if is_classifier and last:
                # The output layer: one unit per class, no activation, no batch norm.
                blocks[f"stack{s + 1}_{i + 1}"] = _conv_layer(channels, classes, k, None, False)
                channels = classes
            else:
                blocks[f"stack{s + 1}_{i + 1}"] = _conv_layer(channels, units, k, act, bn)
                channels = units
        if s < spec.pooled_stacks:
            # ceil_mode lets the CIFAR nets run on 28x28 inputs too (28 -> 14 -> 7 -> 4 -> 2 -> 1).
            blocks[f"pool{s + 1}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
            height, width = -(-height // 2), -(-width // 2)
        if p > 0:
            blocks[f"drop{s + 1}"] = nn.Dropout(p)
    if spec.head == "conv":
        blocks["gap"] = nn.AdaptiveAvgPool2d(1)
        blocks["flatten"] = nn.Flatten()
    else:
        blocks["flatten"] = nn.Flatten()
        if spec.head_dropout > 0:
            blocks["drop"] = nn.Dropout(spec.head_dropout)
        blocks["fc"] = nn.Linear(channels * height * width, classes)
    return nn.Sequential(blocks)


def _mlp_body(in_shape: tuple[int, int, int], classes: int, act, bn: bool) -> nn.Sequential:
    blocks: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_shape[0] * in_shape[1] * in_shape[2]
    for i, units in enumerate(MLP_HIDDEN):
        layer: OrderedDict[str, nn.Module] = OrderedDict(fc=nn.Linear(width, units, bias=not bn))
        if bn:
            layer["bn"] = nn.BatchNorm1d(units)
        layer["act"] = act()
        blocks[f"hidden{i + 1}"] = nn.Sequential(layer)
        width = units
    blocks["fc"] = nn.Linear(width, classes)
    return nn.Sequential(blocks)


ARCHITECTURES: dict[str, Callable[..., nn.Sequential]] = {
    "fashion-cnn": lambda *a: _conv_body(FASHION_CNN, *a),
    "elu-cifar11": lambda *a: _conv_body(ELU_CIFAR11, *a),
    "elu-cifar18": lambda *a: _conv_body(ELU_CIFAR18, *a),
    "mlp-8x128": _mlp_body,
}


class Network(nn.Module):
    """normalize (fitted buffers) -> body (the trained layers) -> logits."""

    def __init__(self, normalize: nn.Module, body: nn.Sequential):
        super().__init__()
        self.normalize = normalize
        self.body = body

    def forward(self, x):
        return self.body(self.normalize(x))


def build_model(card: ModelCard, normalize: nn.Module | None = None) -> Network:
    """The network the card describes, with PyTorch's default initialisation.

    ``normalize`` is a fitted normalization module (training passes the one
    fitted on the train split); without it, an unfitted one is made and the
    saved weights fill its buffers when a checkpoint is loaded.
    """
    try:
        make_body = ARCHITECTURES[card.architecture]
    except KeyError:
        raise ElunetError(
            f"unknown architecture {card.architecture!r}", hint=f"choose one of: {', '.join(ARCHITECTURES)}"
        ) from None
    in_shape = card.input_shape
    if normalize is None:
        normalize = make_normalization(card.preprocessing.normalization, *in_shape)
    elif getattr(normalize, "kind", None) != card.preprocessing.normalization:
        raise ElunetError(
            f"normalization module {getattr(normalize, 'kind', type(normalize).__name__)!r} "
            f"does not match the card's {card.preprocessing.normalization!r}"
        )
    act = lambda: make_activation(card.activation, card.alpha)  # noqa: E731
    body = make_body(in_shape, card.num_classes, act, card.batch_norm)
    return Network(normalize, body)


def describe_model(
    *,
    name: str,
    architecture: str,
    activation: str,
    alpha: float | None,
    batch_norm: bool,
    dataset: str,
    labels: list[str],
    input_shape: tuple[int, int, int],
    normalization: str,
    training: dict | None = None,
) -> ModelCard:
    """The card of a new model; ``alpha`` is checked and defaulted for the activation."""
    from elunet.train.activations import resolve_alpha

    if architecture not in ARCHITECTURES:
        raise ElunetError(f"unknown architecture {architecture!r}", hint=f"choose one of: {', '.join(ARCHITECTURES)}")
    channels, height, width = input_shape
    check_model_name(name)
    return ModelCard(
        name=name,
        architecture=architecture,
        activation=activation,
        alpha=resolve_alpha(activation, alpha),
        batch_norm=batch_norm,
        dataset=dataset,
        labels=list(labels),
        preprocessing=Preprocessing(
            channels=channels, height=height, width=width, color_mode="L" if channels == 1 else "RGB", normalization=normalization
        ),
        training=training or {},
    )
