"""What the ELU paper (Clevert et al., ICLR 2016) reports, for printing beside measured figures."""

from __future__ import annotations

# Test error (%) on CIFAR-100, mean ± std over 10 runs, 11-layer net without batch norm (paper, Table 1 text).
CIFAR100_TEST_ERROR_PERCENT = {
    "elu": (28.75, 0.24),
    "srelu": (29.35, 0.29),
    "lrelu": (30.59, 0.29),
    "relu": (31.56, 0.37),
}

# How the paper writes each activation's name.
DISPLAY_NAMES = {"elu": "ELU", "srelu": "SReLU", "lrelu": "LReLU", "relu": "ReLU"}

# The paper's ranking by test error, best first; the same order is its claim for any dataset.
PAPER_ORDER = ("elu", "srelu", "lrelu", "relu")

# The run that reproduces the paper's comparison: its dataset and architecture.
PAPER_DATASET = "cifar100"
PAPER_ARCH = "elu-cifar11"


def is_paper_setting(dataset: str, arch: str) -> bool:
    """Whether a run is the paper's CIFAR-100 comparison, so its reference figures apply."""
    return dataset.replace("-", "") == PAPER_DATASET and arch == PAPER_ARCH

# The paper's comparison as one command for a GPU host: its schedule by iteration at mini-batch 100
# (schedules.py "paper-cifar"), 330 epochs as in public reimplementations, 10 seeds as in the paper.
PAPER_COMMAND = (
    f"elunet experiment activations --dataset {PAPER_DATASET} --arch {PAPER_ARCH} --seeds 10 --epochs 330 "
    "--batch-size 100 --lr 0.01 --schedule paper-cifar --momentum 0.9 --weight-decay 5e-4 --device cuda "
    "--out runs/experiments/cifar100"
)
