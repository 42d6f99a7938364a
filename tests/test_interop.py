"""natgrad's unit blocks exported to curvlinops and nngeometry and read back: each round
trip returns the blocks bit for bit, and the peers' own curvature (curvlinops' GGN,
nngeometry's block-diagonal FIM), read as unit blocks, equals natgrad's exact ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from natgrad import unit_fishers
from natgrad.errors import InputError
from natgrad.interop import (
    layer_block,
    to_curvlinops,
    to_nngeometry,
    unit_blocks,
    unit_blocks_from_nngeometry,
    unit_blocks_from_operator,
)
from natgrad.testing import assert_close

JIT_DEPRECATION = "ignore::DeprecationWarning"


def _net():
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ELU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 4)).double()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(12, 2, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (12,), generator=gen)
    return model, x, y


def _params(model, names):
    mods = dict(model.named_modules())
    return [p for n in names for p in (mods[n].weight, mods[n].bias)]


def test_layer_block_and_unit_blocks_invert_each_other():
    blocks = torch.randn(4, 3, 3, dtype=torch.float64)
    M = layer_block(blocks)
    assert torch.equal(unit_blocks(M, 4), blocks)
    assert M[0, 1] == blocks[0, 0, 1] and M[0, 8] == blocks[0, 0, 2]  # unit 0's bias at U·d
    assert M[0, 2] == 0  # unit 0's weight against unit 1's: outside every unit block
    with pytest.raises(InputError, match="U·\\(d\\+1\\) rows"):
        unit_blocks(torch.zeros(7, 7), 2)


@pytest.mark.filterwarnings(JIT_DEPRECATION)
def test_curvlinops_round_trip_and_ggn_unit_blocks():
    from curvlinops import GGNLinearOperator

    model, x, y = _net()
    F = unit_fishers(model, x, y)
    op = to_curvlinops(F, model)
    names = list(F)
    back = unit_blocks_from_operator(op, model, names)
    for name in names:
        assert torch.equal(back[name], F[name].matrix), name
    # op @ v is the block-diagonal product, layer by layer
    v = [torch.randn_like(p) for p in _params(model, names)]
    Fv = op @ v
    for k, name in enumerate(names):
        U = F[name].matrix.shape[0]
        g = torch.cat([v[2 * k].reshape(U, -1), v[2 * k + 1].reshape(U, 1)], 1)
        want = torch.einsum("uij,uj->ui", F[name].matrix, g)
        assert_close(torch.cat([Fv[2 * k].reshape(U, -1), Fv[2 * k + 1].reshape(U, 1)], 1),
                     want, what=name)  # fmt: skip
    # the peer's own Fisher (GGN of the mean cross-entropy), read as unit blocks
    ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(), _params(model, names), [(x, y)],
                            check_deterministic=False)  # fmt: skip
    theirs = unit_blocks_from_operator(ggn, model, names)
    for name in names:
        atol = 1e-12 * theirs[name].abs().amax().item()
        assert_close(F[name].matrix, theirs[name], atol=atol, what=f"curvlinops GGN {name}")
    scipy_op = op.to_scipy()
    assert scipy_op.shape == (op.shape[0], op.shape[0])


def test_nngeometry_round_trip_and_fim_unit_blocks():
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatBlockDiag

    model, x, y = _net()
    F = unit_fishers(model, x, y)
    pmat = to_nngeometry(F, model)
    back = unit_blocks_from_nngeometry(pmat, model)
    assert list(back) == list(F)
    for name in F:
        assert torch.equal(back[name], F[name].matrix), name
    # nngeometry's own Fisher of the logits (exact over the labels), per layer
    lc = LayerCollection()
    for name in F:
        lc.add_layer_from_model(model, dict(model.named_modules())[name])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    theirs = FIM(model, loader, PMatBlockDiag, variant="classif_logits",
                 layer_collection=lc)  # fmt: skip
    got = unit_blocks_from_nngeometry(theirs, model)
    for name in F:
        atol = 1e-12 * got[name].abs().amax().item()
        assert_close(F[name].matrix, got[name].to(torch.float64), atol=atol,
                     what=f"nngeometry FIM {name}")  # fmt: skip


def test_export_needs_every_unit_in_order():
    model, x, y = _net()
    F = unit_fishers(model, x, y, units={"3": [1, 2]})
    with pytest.raises(InputError, match="layer '3': exporting needs the blocks of every unit"):
        to_nngeometry({"3": F["3"]}, model)
    with pytest.raises(InputError, match="Linear and Conv2d layers"):
        to_curvlinops({"1": F["3"]}, model)


@pytest.mark.parametrize("representation", ["PMatBlockDiag", "PMatDense"])
def test_nngeometry_layer_without_a_bias_is_refused(representation):
    """A bias-free Linear's nngeometry block has U·d rows: read as U blocks of d+1 entries,
    each 'unit block' would end in the next unit's first weight (the review's case). It is
    refused with the error every other function here gives for such a layer."""
    import nngeometry.object
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))
    x, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=9)
    pmat = FIM(model, loader, getattr(nngeometry.object, representation), variant="classif_logits",
               layer_collection=LayerCollection.from_model(model))  # fmt: skip
    with pytest.raises(InputError, match="layer '2'.*with a bias.*a Linear without a bias"):
        unit_blocks_from_nngeometry(pmat, model)
    with pytest.raises(InputError, match="layer '2'.*a Linear without a bias"):
        to_curvlinops({"2": None}, model)


def test_a_quasidiagonal_result_is_not_exported_as_a_fisher():
    """A quasi-diagonal result's ``matrix`` is Ollivier's metric Q, whose weight off-diagonals
    (b_i b_j / c) are in neither F nor nngeometry's PMatQuasiDiag: exported, a peer would take
    Q for the Fisher. Both exports refuse it, naming the structure to use."""
    model, x, y = _net()
    for structure in ("quasidiagonal", "diagonal"):
        F = unit_fishers(model, x, y, layers=["3"], structure=structure)
        for export in (to_nngeometry, to_curvlinops):
            with pytest.raises(InputError, match=f"layer '3'.*{structure}.*structure='dense'"):
                export(F, model)


@pytest.mark.parametrize("representation", ["PMatQuasiDiag", "PMatKFAC", "PMatDiag"])
def test_nngeometry_representations_without_unit_blocks_are_refused(representation):
    """Only PMatBlockDiag and PMatDense hold a layer's unit blocks; the others (a tuple per
    layer, or a diagonal) raised AttributeError or were read as if they did."""
    import nngeometry.object
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(9, 3), torch.randint(0, 2, (9,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=9)
    pmat = FIM(model, loader, getattr(nngeometry.object, representation), variant="classif_logits",
               layer_collection=LayerCollection.from_model(model))  # fmt: skip
    with pytest.raises(InputError, match=f"PMatBlockDiag or PMatDense, got a {representation}"):
        unit_blocks_from_nngeometry(pmat, model)


def test_to_nngeometry_refuses_a_dense_layer_block_beyond_its_budget():
    """PMatBlockDiag holds each layer's dense U(d+1) × U(d+1) block (a 512 × 513 layer: 276 GB
    in float32): beyond ``max_elements`` it is refused, pointing to the matrix-free export."""
    model, x, y = _net()
    F = unit_fishers(model, x, y, layers=["3"])
    with pytest.raises(InputError, match="layer '3'.*245 × 245.*to_curvlinops"):
        to_nngeometry(F, model, max_elements=1000)
    assert to_nngeometry(F, model) is not None
