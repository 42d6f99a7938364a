r"""Test cases as data: small (model, data, likelihood, seed) factories with readable ids.

Every case is tiny (N ≤ 24, widths ≤ 8) so that :func:`natgrad.reference.reference_unit_fisher`
(a Python loop over samples and labels) stays fast. Models are built inside the test, after
the autouse fixture has made float64 the default dtype.

``LAYER_CASES`` pairs each case with the layers it exercises (first / middle / last, conv,
branches); ``layer_case_id`` gives ids like ``"mlp-elu-categorical/2"``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

try:  # the paper's shifted ReLU, max(-1, x); natgrad.units is the home of the unit zoo
    from natgrad.units import SReLU
except ImportError:  # pragma: no cover - only while natgrad/units.py does not exist

    class SReLU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.clamp(x, min=-1.0)


def _mlp(act: Callable[[], nn.Module], d_in: int = 5, width: int = 8, d_out: int = 4):
    def build() -> nn.Module:
        return nn.Sequential(
            nn.Linear(d_in, width),
            act(),
            nn.Linear(width, 6),
            act(),
            nn.Linear(6, d_out),
        )

    return build


def _mlp_grid_output() -> nn.Module:
    """Output of shape [N, 2, 3], flattened to D = 6 by bernoulli/gaussian."""
    return nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.ELU(), nn.Unflatten(1, (2, 3))
    )


def _cnn() -> nn.Module:
    """conv(stride 2, padding 1) → ELU → conv(padding 1) → ReLU → flatten → linear head."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),  # [N, 3, 3, 3]
        nn.ELU(),
        nn.Conv2d(3, 4, 3, padding=1),  # [N, 4, 3, 3]
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 4),
    )


def _cnn_odd() -> nn.Module:
    """Non-square kernel, uneven stride, dilation, reflect 'same' padding, eval BatchNorm."""
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
            bn=nn.BatchNorm2d(3),
            act1=nn.LeakyReLU(0.1),
            conv2=nn.Conv2d(3, 2, 3, padding="same", padding_mode="reflect"),
            act2=nn.ELU(),
            flat=nn.Flatten(),
            head=nn.Linear(2 * 5 * 2, 3),
        )
    )
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


class _SkipNet(nn.Module):
    """Not a Sequential: two branches and a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.branch_a = nn.Linear(6, 6)
        self.branch_b = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.elu(self.fc1(x))
        h = h + torch.relu(self.branch_a(h)) + self.branch_b(h)
        return self.out(h)


class _TokenNet(nn.Module):
    """A Linear applied along an extra dimension ([N, 3, 4] → [N, 3, 5]): weight-shared
    Linear units with P = 3 positions."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 5)
        self.head = nn.Linear(15, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.elu(self.embed(x)).flatten(1))


@dataclass(frozen=True)
class FisherCase:
    """A model factory, its input shape, the likelihood and the seed of weights and data."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    likelihood: str
    layers: tuple[str, ...]
    n: int = 16
    seed: int = 0

    def make(self) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """``(model, inputs [N, ...], targets)`` in the default dtype, deterministic."""
        torch.manual_seed(self.seed)
        model = self.build()
        x = torch.randn(self.n, *self.input_shape)
        with torch.no_grad():
            out = model(x)
        if self.likelihood == "categorical":
            y = torch.randint(0, out.shape[1], (self.n,))
        elif self.likelihood == "bernoulli":
            y = torch.rand(out.shape)  # soft targets in [0, 1]
        else:
            y = out + torch.randn(out.shape)
        return model, x, y

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(1000 + self.seed)


CASES = [
    FisherCase("mlp-elu-categorical", _mlp(nn.ELU), (5,), "categorical", ("0", "2", "4")),
    FisherCase("mlp-relu-categorical", _mlp(nn.ReLU), (5,), "categorical", ("0", "2"), seed=1),
    FisherCase(
        "mlp-lrelu-categorical",
        _mlp(lambda: nn.LeakyReLU(0.1)),
        (5,),
        "categorical",
        ("0", "2"),
        seed=2,
    ),
    FisherCase("mlp-srelu-categorical", _mlp(SReLU), (5,), "categorical", ("0", "2"), seed=3),
    FisherCase("mlp-tanh-categorical", _mlp(nn.Tanh), (5,), "categorical", ("2", "4"), seed=4),
    FisherCase(
        "mlp-inplace-relu-categorical",
        _mlp(lambda: nn.ReLU(inplace=True)),
        (5,),
        "categorical",
        ("0",),
        seed=13,
    ),
    FisherCase(
        "mlp-elu-bernoulli", _mlp(nn.ELU, d_out=3), (5,), "bernoulli", ("0", "4"), n=24, seed=5
    ),
    FisherCase(
        "mlp-relu-gaussian", _mlp(nn.ReLU, d_out=3), (5,), "gaussian", ("0", "2"), n=24, seed=6
    ),
    FisherCase("mlp-grid-bernoulli", _mlp_grid_output, (4,), "bernoulli", ("0", "2"), seed=7),
    FisherCase("mlp-grid-gaussian", _mlp_grid_output, (4,), "gaussian", ("0", "2"), seed=8),
    FisherCase("cnn-categorical", _cnn, (2, 6, 6), "categorical", ("0", "2", "5"), seed=9),
    FisherCase("cnn-gaussian", _cnn, (2, 6, 6), "gaussian", ("0",), seed=10),
    FisherCase("cnn-odd-categorical", _cnn_odd, (2, 5, 5), "categorical", ("conv1", "conv2")),
    FisherCase(
        "skipnet-categorical",
        _SkipNet,
        (5,),
        "categorical",
        ("fc1", "branch_a", "branch_b.0", "out"),
        seed=11,
    ),
    FisherCase("tokens-categorical", _TokenNet, (3, 4), "categorical", ("embed", "head"), seed=12),
]

LAYER_CASES = [(case, layer) for case in CASES for layer in case.layers]


def layer_case_id(value) -> str:
    """Readable pytest id of a ``(case, layer)`` pair."""
    case, layer = value
    return f"{case.name}/{layer}"


def case_id(case: FisherCase) -> str:
    return case.name
