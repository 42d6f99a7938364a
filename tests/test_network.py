"""The whole-network Fisher (natgrad.network): its unit blocks are natgrad's unit Fishers (a
second, independent route), the whole matrix is the per-sample, per-label brute force, and
the measures on it mean what they say."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from natgrad.errors import InputError, SingularBlockError
from natgrad.fisher import unit_fishers
from natgrad.network import NetworkFisher, loglik_gradient, network_fisher
from natgrad.testing import assert_close


def _net(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 3))
    return net.double(), torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))


def test_unit_blocks_are_the_unit_fishers():
    net, x, _ = _net()
    whole = network_fisher(net, x, batch_size=16)
    engine = unit_fishers(net, x, kind="exact")
    for layer, fisher in engine.items():
        assert_close(whole.unit_blocks(layer), fisher.matrix, what=f"{layer} unit blocks")


def test_whole_matrix_is_the_brute_force():
    """F = (1/N) Σ_n Σ_y p(y|x_n) ∇ln p(y|x_n) ∇ln p(y|x_n)ᵀ by autograd, label by label."""
    net, x, _ = _net(1)
    params = list(net.parameters())
    total = sum(p.numel() for p in params)
    want = torch.zeros(total, total, dtype=torch.float64)
    for xn in x:
        logp = torch.log_softmax(net(xn.unsqueeze(0)), -1)[0]
        for y in range(logp.shape[0]):
            g = torch.cat(
                [t.flatten() for t in torch.autograd.grad(logp[y], params, retain_graph=True)]
            )
            want += logp[y].exp().detach() * torch.outer(g, g)
    want /= x.shape[0]
    got = network_fisher(net, x).matrix
    assert_close(got, want, what="whole-network Fisher")


def test_measures_on_a_block_diagonal_fisher():
    """When F is block-diagonal by units the unit natural gradient IS the natural gradient."""
    gen = torch.Generator().manual_seed(0)
    blocks = []
    for d1 in (3, 2):
        a = torch.randn(d1, d1, generator=gen, dtype=torch.float64)
        blocks.append(a @ a.T + torch.eye(d1, dtype=torch.float64))
    F = NetworkFisher(torch.block_diag(*blocks), ("w",), ((5,),), (0,), 10,
                      (("l", 0, torch.tensor([0, 1, 2])), ("l", 1, torch.tensor([3, 4]))))  # fmt: skip
    g = torch.randn(5, generator=gen, dtype=torch.float64)
    assert F.unit_block_share() == pytest.approx(1.0)
    out = F.unit_vs_full(g, rel_damping=1e-3)
    assert out["rho_unit_ng"] == pytest.approx(1.0, abs=1e-12)
    assert out["rho_plain"] < 1.0
    spec = F.spectrum()
    assert (spec[:-1] >= spec[1:]).all()
    assert float(spec.sum()) == pytest.approx(float(F.matrix.trace()))


def test_on_a_real_net_the_unit_step_is_closer_than_plain():
    net, x, y = _net(2)
    F = network_fisher(net, x)
    out = F.unit_vs_full(loglik_gradient(net, x, y), rel_damping=1e-3)
    assert 0.0 < out["rho_plain"] < out["rho_unit_ng"] <= 1.0
    assert 0.0 < F.unit_block_share() < 1.0


def test_bad_input_is_named():
    net, x, _ = _net()
    with pytest.raises(InputError, match="max_params"):
        network_fisher(net, x, max_params=10)
    with pytest.raises(InputError, match="NaN"):
        network_fisher(net, torch.full_like(x, float("nan")))
    F = network_fisher(net, x)
    with pytest.raises(InputError, match="no units of layer"):
        F.unit_blocks("nope")
    with pytest.raises(InputError, match="entries"):
        F.unit_vs_full(torch.zeros(3))


def test_gram_route_equals_the_dense_fisher():
    from natgrad.network import network_fisher_gram

    gen = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ELU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 4)).double()  # fmt: skip
    x = torch.randn(25, 2, 4, 4, generator=gen, dtype=torch.float64)
    F = network_fisher(net, x)
    G = network_fisher_gram(net, x, batch_size=7)
    dense = F.spectrum()
    k = G.eigenvalues.numel()
    assert k == min(25 * 4, F.num_params)
    assert_close(G.eigenvalues[:10], dense[:10], atol=1e-12 * float(dense[0]), what="spectrum")
    assert G.trace == pytest.approx(float(F.matrix.trace()), rel=1e-12)
    assert G.frobenius_sq == pytest.approx(float(F.matrix.square().sum()), rel=1e-12)
    assert G.unit_block_share() == pytest.approx(F.unit_block_share(), rel=1e-12)
    assert G.top_eig_over_mean() == pytest.approx(float(dense[0] / dense.mean()), rel=1e-10)
    with pytest.raises(InputError, match="exceed max_rows=50"):
        network_fisher_gram(net, x, max_rows=50)


def test_tied_weights_are_refused_by_layer_and_a_reused_layer_is_one_layer():
    """Two layers sharing a parameter (``b.weight = a.weight``) leave one of them without
    positions in the flat vector (a bare KeyError before): an InputError naming both layers,
    from both routes. One layer applied twice (registered under two names) is one layer with
    one set of units, not refused."""
    from natgrad.network import network_fisher_gram

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))

    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 4), nn.ELU())
            self.shared, self.out = self.block[0], nn.Linear(4, 3)

        def forward(self, x):
            return self.out(self.shared(self.block(x)))

    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64)
    for route in (network_fisher, network_fisher_gram):
        with pytest.raises(InputError, match=r"layers 'a' and 'b' share a parameter.*a\.weight"):
            route(Tied().double(), x)
    net = Reused().double()
    F = network_fisher(net, x)
    assert [name for name, u, _ in F.units if u == 0] == ["block.0", "out"]
    assert network_fisher_gram(net, x).num_params == F.num_params == 35


def test_batch_statistics_in_eval_mode_are_refused():
    """A BatchNorm with track_running_stats=False normalises with the batch's statistics even
    in eval mode: the logits came from a batched forward and the Jacobians from per-input
    ones, so the matrix depended on batch_size (3 % apart at 256 and 1). Refused, named."""
    from natgrad.network import network_fisher_gram

    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ELU(),
                        nn.Linear(4, 2))  # fmt: skip
    for fn in (network_fisher, network_fisher_gram):
        with pytest.raises(InputError, match="layer '1'.*track_running_stats=False.*batch"):
            fn(net, torch.randn(5, 3))


def test_a_parametrized_weight_is_refused_before_any_work():
    """weight_norm / parametrize move a layer's weight out of its parameters: the unit blocks
    have no positions, and the KeyError came after the whole P × P matrix was computed."""
    net = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.ELU(),
                        nn.Linear(4, 2))  # fmt: skip
    with pytest.raises(InputError, match="layer '0'.*parametriz"):
        network_fisher(net, torch.randn(5, 3))


def test_the_reference_refuses_batch_statistics():
    """The reference evaluates one input at a time: a batch norm using batch statistics (no
    running statistics, or training mode) gave blocks 34 % from unit_fisher's (BatchNorm2d)
    or torch's raw 'Expected more than 1 value per channel' (BatchNorm1d). Refused, named."""
    from natgrad.reference import reference_unit_fisher

    for bn in (nn.BatchNorm1d(4, track_running_stats=False), nn.BatchNorm1d(4)):
        net = nn.Sequential(nn.Linear(3, 4), bn, nn.ELU(), nn.Linear(4, 2))
        net.eval() if bn.running_mean is None else net.train()
        with pytest.raises(InputError, match=r"batch-norm layers \['1'\].*one input at a time"):
            reference_unit_fisher(net, "0", torch.randn(5, 3))


def test_a_zero_gradient_has_no_efficiency_rather_than_an_error():
    """ρ of g = 0 is NaN (no direction to compare), as ``natgrad.measures.efficiency``
    gives it per unit; it divided by zero."""
    net, x, _ = _net()
    F = network_fisher(net, x)
    out = F.unit_vs_full(torch.zeros(F.num_params, dtype=torch.float64))
    assert all(v != v for v in out.values()), out


def test_the_unit_block_pieces_of_the_whole_network_fisher():
    """``damped``, ``unit_metric``, ``per_unit`` (default and a given solve) and
    ``top_eig_over_mean`` against their definitions on a small real net."""
    net, x, _ = _net()
    F = network_fisher(net, x)
    D = F.damping(1e-2)
    f_lam = F.damped(1e-2)
    assert_close(f_lam, F.matrix + torch.diag(D))
    U = F.unit_metric(f_lam)
    mask = F._block_mask() | torch.eye(F.num_params, dtype=torch.bool)
    assert_close(U, torch.where(mask, f_lam, 0.0))
    g = torch.randn(F.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert_close(F.per_unit(g, f_lam), torch.linalg.solve(U, g))  # the unit blocks' own solves
    halved = F.per_unit(g, f_lam, lambda B, gu: gu / 2)
    in_units = F._block_mask().diagonal()
    assert_close(halved[in_units], g[in_units] / 2)
    assert_close(halved[~in_units], g[~in_units])  # parameters of no unit keep g
    spec = torch.linalg.eigvalsh(F.matrix)
    assert F.top_eig_over_mean() == pytest.approx(float(spec.max() / spec.mean()), rel=1e-12)


def test_the_gradient_is_of_the_model_the_fisher_is_of():
    """loglik_gradient ran the model as given: in training mode it used batch statistics and
    moved batch norm's running statistics (ρ 0.076 against 0.587 in eval mode), and a frozen
    parameter, which network_fisher counts in P, raised (a helper's finds)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5),
                        nn.Linear(4, 3)).double()  # fmt: skip
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    buffers = [b.clone() for b in net.buffers()]
    got = loglik_gradient(net, x, y)  # training mode, as built
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers(), strict=True))
    twin = copy.deepcopy(net).eval()
    loss = nn.functional.cross_entropy(twin(x), y)
    want = torch.cat([t.flatten() for t in torch.autograd.grad(-loss, list(twin.parameters()))])
    assert_close(got, want, what="the eval-mode gradient")
    net[0].requires_grad_(False)  # frozen: still in P, as in network_fisher
    assert loglik_gradient(net, x, y).shape[0] == network_fisher(net, x).num_params


def test_an_undamped_singular_network_fisher_is_named():
    """A dead unit at rel_damping 0 gave a raw torch LinAlgError (a helper's find)."""
    net, x, y = _net()
    with torch.no_grad():
        net[2].weight[0] = 0.0
        net[2].bias[0] = -1.0  # unit 0 of the ReLU layer dead on every input: a zero block
    F = network_fisher(net, x)
    with pytest.raises(SingularBlockError, match=r"rel_damping=0.*pass rel_damping > 0"):
        F.unit_vs_full(loglik_gradient(net, x, y), rel_damping=0.0)
