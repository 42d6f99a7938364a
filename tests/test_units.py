"""Units of Fig 1: formulas against the paper's definitions, and the factory's errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from natgrad.errors import InputError
from natgrad.testing import assert_close
from natgrad.units import UNIT_NAMES, SReLU, hidden_units, make_unit

X = torch.linspace(-4.0, 3.0, 57, dtype=torch.float64)

FORMULAS = {
    "elu": lambda x, a: torch.where(x > 0, x, a * (torch.exp(x) - 1)),
    "relu": lambda x, a: torch.where(x > 0, x, torch.zeros_like(x)),
    "lrelu": lambda x, a: torch.where(x > 0, x, a * x),
    "srelu": lambda x, a: torch.where(x > -1, x, -torch.ones_like(x)),
    "prelu": lambda x, a: torch.where(x > 0, x, a * x),
    # Klambauer et al. (2017): λ and α to the digits torch uses.
    "selu": lambda x, a: (
        1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1))
    ),
    # Hendrycks & Gimpel (2016): x Φ(x), Φ the standard normal CDF (the exact form, not tanh)
    "gelu": lambda x, a: x * 0.5 * (1.0 + torch.special.erf(x / 2.0**0.5)),
}
DEFAULTS = {"elu": 1.0, "relu": None, "lrelu": 0.1, "srelu": None, "prelu": 0.25, "selu": None,
            "gelu": None}  # fmt: skip


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_default_formula(name):
    unit = make_unit(name).to(torch.float64)
    assert_close(unit(X).detach(), FORMULAS[name](X, DEFAULTS[name]), what=name)


@pytest.mark.parametrize("name", ["elu", "lrelu", "prelu"])
def test_alpha(name):
    unit = make_unit(name, alpha=0.37).to(torch.float64)
    assert_close(unit(X).detach(), FORMULAS[name](X, 0.37), what=name)


def test_torch_builtins_and_srelu_module():
    assert isinstance(make_unit("ELU"), nn.ELU)
    assert isinstance(make_unit("relu"), nn.ReLU)
    assert isinstance(make_unit("lrelu"), nn.LeakyReLU)
    assert isinstance(make_unit("prelu"), nn.PReLU)
    assert isinstance(make_unit("srelu"), SReLU)
    assert make_unit("elu") is not make_unit("elu")


def test_srelu_gradient_is_indicator():
    """f′(x) = 1{x > −1}, THEORY's and the SymPy spec's: slope 0 at the kink, as torch's ReLU
    at 0 (SReLU(x) = ReLU(x + 1) − 1). NaN stays NaN; float32 keeps small values exactly."""
    x = torch.cat([X, torch.tensor([-1.0, 1e-10], dtype=X.dtype)]).requires_grad_(True)
    SReLU()(x).sum().backward()
    assert_close(x.grad, (x.detach() > -1).to(X.dtype))
    assert torch.isnan(SReLU()(torch.tensor([math.nan]))).all()
    assert SReLU()(torch.tensor([1e-10])).item() == torch.tensor([1e-10]).item()


def test_unknown_unit_and_bad_alpha():
    with pytest.raises(InputError, match="unknown unit 'tanh'"):
        make_unit("tanh")
    with pytest.raises(InputError, match="relu"):
        make_unit("relu", alpha=0.2)
    for name, alpha in (("elu", math.nan), ("prelu", math.inf), ("elu", -1.0), ("lrelu", -0.1)):
        with pytest.raises(InputError, match=f"{name}.*alpha"):
            make_unit(name, alpha=alpha)  # ELU(α=−1) rises to +0.63 at −1: not an ELU
    assert make_unit("elu", alpha=0.0)(torch.tensor([-3.0])).item() == 0.0  # α = 0: ReLU
    for bad in (True, "1"):  # True made ELU(alpha=1.0); a string raised a raw TypeError
        with pytest.raises(InputError, match="is not a number"):
            make_unit("elu", alpha=bad)
    assert make_unit("prelu", alpha=-0.5).weight.item() == -0.5  # a learnt slope: any sign


def test_hidden_units_in_order():
    net = nn.Sequential(nn.Linear(2, 3), make_unit("elu"), nn.Linear(3, 3), SReLU())
    assert [n for n, _ in hidden_units(net)] == ["1", "3"]


def test_layer_norm_unit_types_have_a_key_label_colour_and_place():
    from natgrad.units import (
        split_unit_type,
        unit_type_colour,
        unit_type_key,
        unit_type_label,
        unit_type_order,  # fmt: skip
    )

    assert unit_type_key("relu", layer_norm=True) == "relu-ln"
    assert split_unit_type("relu-ln") == ("relu", "-ln")
    assert unit_type_label("gelu-ln", tex=False).endswith("+LN")
    assert len({unit_type_colour(k) for k in ("relu", "relu-bn", "relu-ln")}) == 3
    assert unit_type_order(["relu-ln", "relu-bn", "relu", "elu-ln"]) == [
        "elu-ln",
        "relu",
        "relu-bn",
        "relu-ln",
    ]
