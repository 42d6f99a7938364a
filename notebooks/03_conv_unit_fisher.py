# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The unit Fisher of a conv net
#
# A unit of a Conv2d layer is one output channel. It shares its weights over every output
# position p, so its per-input gradient is g = Σ_p δ_p ã_p and its unit Fisher is the
# **weight-shared block** F = E_p E_y[g gᵀ] = [[A, b], [bᵀ, c]] (bias last), which does not
# factor as δ̄²·ããᵀ. We train a small CNN on the 8×8 digits for a few seconds and look at
#
# 1. one channel's weight-shared block;
# 2. Ollivier's **quasi-diagonal** metric Q, built from F's diagonal, bias row and bias entry
#    (O(d) memory and solves, `structure="quasidiagonal"`), against it. Q is not the arrowhead
#    matrix [[diag(A), b], [bᵀ, c]]: that one's inverse is another update (`arrowhead`,
#    docs/theory.md);
# 3. the two definitions of the conv q-moments: E_q(a) := b/c of the weight-shared block
#    (`conv_moments="shared"`, docs/theory.md) and of the block with the positions treated as
#    separate samples (`conv_moments="positions"`, K-FAC-for-conv style:
#    F = (1/N) Σ_n Σ_p δ̄²_np ã_np ã_npᵀ, the cross-position terms dropped).

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.nn import functional as F

from natgrad.data import load_dataset
from natgrad.fisher import unit_fisher
from natgrad.testing import assert_close, conditioned

torch.manual_seed(0)
data = load_dataset("digits", seed=0)
x_train, y_train = data.train_x, data.train_y
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1),  # [N, 8, 8, 8]
    nn.ELU(),
    nn.MaxPool2d(2),  # [N, 8, 4, 4]
    nn.Conv2d(8, 12, 3, padding=1),  # the layer we study: d = 8·3·3 = 72, 16 positions
    nn.ELU(),
    nn.Flatten(),
    nn.Linear(12 * 4 * 4, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _epoch in range(4):
    for i in torch.randperm(x_train.shape[0]).split(64):
        opt.zero_grad()
        F.cross_entropy(model(x_train[i]), y_train[i]).backward()
        opt.step()
model = model.eval().to(torch.float64)
x, y = data.test_x.to(torch.float64), data.test_y
accuracy = (model(x).argmax(1) == y).double().mean().item()
print(f"test accuracy {accuracy:.3f} on {x.shape[0]} inputs")
assert accuracy > 0.8

# %% [markdown]
# ## 1. One channel's weight-shared block
#
# The exact Fisher (closed-form expectation over the model's labels), float64, on the test
# inputs. We pick the channel whose E_q(a) = b/c is furthest from zero.

# %%
layer = "3"
shared = unit_fisher(model, layer, x)
unit = int(shared.mean_q.norm(dim=-1).argmax())
block = shared.matrix[unit]
print(shared)
print(
    f"unit {unit}: c = {shared.c[unit]:.3g}, condition number {shared.condition_number()[unit]:.3g}"
)
fig, ax = plt.subplots(1, 2, figsize=(9, 4))
im = ax[0].imshow(block, cmap="RdBu_r", vmin=-block.abs().max(), vmax=block.abs().max())
ax[0].set_title(f"weight-shared block F of channel {unit} (bias last)")
fig.colorbar(im, ax=ax[0])
ax[1].plot(shared.mean_p, "o", label="E_p(a) (mean patch)")
ax[1].plot(shared.mean_q[unit], "x", label="E_q(a) = b/c")
ax[1].set_xlabel("patch entry (C_in·kh·kw)")
ax[1].legend()
plt.show()

# %% [markdown]
# ## 2. The quasi-diagonal approximation
#
# `structure="quasidiagonal"` stores diag(F) and b only, computed from the same backward pass
# without forming F. Its entries are exactly F's. They define Ollivier's quasi-diagonal
# metric Q: F's diagonal, bias row and bias entry, with the weights coupled only through the
# bias (its q-covariance is diagonal); Q⁻¹g is Ollivier's update, O(d) per unit. How good a
# metric is Q for the true F? The Fisher efficiency ρ(u) = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g) of an
# update u in the true (relatively damped) metric F_λ is 1 for the natural gradient; we
# evaluate it for the layer's own gradient g of the mean log-likelihood (`natgrad.measures`).

# %%
quasi = unit_fisher(model, layer, x, structure="quasidiagonal")
assert_close(quasi.diagonal, torch.diagonal(shared.matrix, dim1=-2, dim2=-1))
assert_close(quasi.bias_column, shared.b)

conv = model[3]
model.zero_grad()
F.cross_entropy(model(x), y).backward()
g, g0 = -conv.weight.grad, -conv.bias.grad  # gradient of the mean log-likelihood
rel = 1e-3  # F_λ = F + λ·tr(F)/(d+1)·I
# the structure's natural gradient (O(d), from diag(F) and b) is the dense route's
# quasi-diagonal direction
kappa = shared.condition_number(rel_damping=rel)
for a, b in zip(
    quasi.direction(g, g0, "natural", rel),
    shared.direction(g, g0, "quasidiagonal", rel),
    strict=True,
):
    assert_close(a, b, **conditioned(kappa, shared.fan_in + 1))
rho = {
    k: shared.efficiency(g, g0, k, rel)
    for k in ("plain", "centred", "diagonal", "quasidiagonal", "natural")
}
for name, r in rho.items():
    print(
        f"Fisher efficiency ρ({name:13}) median over channels {r.median():.3f}  (min {r.min():.3f})"
    )
assert_close(rho["natural"], torch.ones(12), **conditioned(kappa, shared.fan_in + 1))

# %% [markdown]
# ## 3. Two definitions of the conv q-moments
#
# The weight-shared block keeps the correlations between positions p ≠ p′ of one input
# (Σ_p Σ_p′ δ_p δ_p′ ã_p ã_p′ᵀ); the positions block drops them, as K-FAC for convolutions
# does (Grosse & Martens 2016), and reads every (input, position) pair as a sample with weight
# δ̄²_np. Both define E_q(a) := b/c and the theorems' s, k from their own block. How far apart
# are they on this trained net?

# %%
positions = unit_fisher(model, layer, x, conv_moments="positions")
rel = (positions.mean_q - shared.mean_q).norm(dim=-1) / shared.mean_q.norm(dim=-1)
ratio_c = positions.c / shared.c
lam = 1e-3 * float(shared.c.mean())
k_shared, k_pos = shared.k(damping=lam), positions.k(damping=lam)
print(
    f"‖E_q(positions) − E_q(shared)‖ / ‖E_q(shared)‖: median {rel.median():.3f}, max {rel.max():.3f}"
)
print(f"c(positions) / c(shared): median {ratio_c.median():.3f} (the cross-position share of c)")
print(f"k: shared median {k_shared.median():.3g}, positions median {k_pos.median():.3g}")
fig, ax = plt.subplots(figsize=(5, 4))
ax.plot(shared.mean_q.flatten(), positions.mean_q.flatten(), ".", ms=3)
ax.axline((0, 0), slope=1, color="gray", lw=0.8)
ax.set_xlabel("E_q(a), weight-shared block")
ax.set_ylabel("E_q(a), positions as samples")
plt.show()
# Both blocks are positive semidefinite and share the incoming mean E_p(a); they differ.
assert_close(positions.mean_p, shared.mean_p)
assert (torch.linalg.eigvalsh(positions.matrix) > -1e-12 * positions.matrix.abs().amax()).all()
assert rel.median() > 1e-6
