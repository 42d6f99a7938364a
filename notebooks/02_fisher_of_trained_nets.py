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
# # The unit Fisher of a trained network
#
# We train a small `mnist-fc` net (8 hidden ELU layers × 128 units) on the 8×8 digits for
# three epochs, keep a checkpoint per epoch, and look at one unit of one layer: its unit
# Fisher block F = [[A, b], [bᵀ, c]] (bias last), the incoming means E_p(a) and
# E_q(a) = b/c, and the terms of Theorems 1–2 — s, k, the bias shifts and the cosine
# between the plain gradient and the unit natural gradient — then the invariant measure of how
# close an update is to the unit natural gradient (the Fisher efficiency ρ), the effective
# sample size behind the block, and how they change with training. `make demo` does the same
# for every unit of four unit types and eight seeds on MNIST (seven types with
# `--dataset digits`).

# %%
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch.nn import functional as F

from natgrad.analysis.runs import checkpoint_epochs, load_model, probe_set
from natgrad.analysis.unitstats import unit_statistics
from natgrad.damping import MEASURE_DAMPING
from natgrad.fisher import unit_fisher
from natgrad.testing import assert_close, conditioned_rtol
from natgrad.training import default_config, default_run_dir, train

workdir = Path(tempfile.mkdtemp(prefix="natgrad-nb02-"))
config = default_config(
    "mnist-fc", dataset="digits", unit="elu", seed=0, epochs=3, checkpoint_every=1, probe_size=256
)
run = train(config, default_run_dir(config, workdir), device="cpu", progress=False).run_dir
epochs = checkpoint_epochs(run)
print(run, "epochs with a model:", epochs)
assert epochs == [0, 1, 2, 3]

# %% [markdown]
# ## One layer, one unit, at the last epoch
#
# The exact unit Fisher (an expectation over the model's own labels) on a held-out probe (the
# first 256 test inputs), computed in float64. We pick the unit of layer `fc4` whose reweighted mean E_q(a) is
# furthest from zero.

# %%
layer = "fc4"
model = load_model(run, 3).to(torch.float64)
x, y = probe_set(run, 256)  # held out: the test split
x = x.to(torch.float64)
fisher = unit_fisher(model, layer, x)
unit = int(fisher.mean_q.norm(dim=-1).argmax())
block = fisher.matrix[unit]  # [d+1, d+1], bias last
print(fisher, "unit", unit)
assert block.shape == (129, 129)
assert_close(block, block.T, what="symmetry")
assert torch.linalg.eigvalsh(block).min() > 0

fig, ax = plt.subplots(figsize=(4.2, 3.6))
im = ax.imshow(block.abs().clamp_min(1e-12).log10(), cmap="viridis")
ax.set_title(f"log10 |F| of {layer} unit {unit} (bias last)")
fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# ## E_p(a) and E_q(a)
#
# E_p(a) is the plain mean of the incoming activations (the outputs of layer `fc3`'s ELUs);
# E_q(a) = b/c is the mean under q(z) ∝ δ̄²(z) p(z), the inputs weighted by how strongly
# this unit's error signal reacts to them. Theorem 2's k is zero exactly when the two agree.

# %%
mean_p, mean_q = fisher.mean_p, fisher.mean_q[unit]
fig, ax = plt.subplots(figsize=(3.6, 3.4))
ax.scatter(mean_p.numpy(), mean_q.numpy(), s=8)
lim = float(torch.cat([mean_p, mean_q]).abs().max()) * 1.05
ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
ax.set(xlabel="E_p(a)", ylabel="E_q(a)", title=f"{layer} unit {unit}: incoming means")
plt.show()
print(f"|E_p(a)| = {mean_p.norm():.3f}, |E_q(a)| = {mean_q.norm():.3f}")
assert mean_p.shape == mean_q.shape == (128,)

# %% [markdown]
# ## Theorems 1 and 2 for this unit
#
# The gradient g is that of the probe set's mean log-likelihood (minus the loss gradient).

# %%
module = dict(model.named_modules())[layer]
gw, gb = torch.autograd.grad(-F.cross_entropy(model(x), y), [module.weight, module.bias])
s_schur, s_paper = fisher.s()[unit], fisher.s("paper")[unit]
k_closed, k_paper = fisher.k()[unit], fisher.k("paper")[unit]
shift = fisher.bias_shift(gw, gb)
dw, dw0 = fisher.natural_gradient(gw, gb)
cosine = fisher.cosine(gw, gb)[unit]
print(f"s = {s_schur:.4g} (paper form {s_paper:.4g}); s·c = {s_schur * fisher.c[unit]:.4g}")
print(f"k = {k_closed:.4g} (paper form {k_paper:.4g})")
n_eff, d1 = float(fisher.n_eff[unit]), fisher.fan_in + 1
if n_eff < 2 * d1:  # s, k and E_q(a) are δ̄²-weighted moments of n_eff effective inputs
    print(
        f"CAVEAT: n_eff = {n_eff:.1f} < 2(d+1) = {2 * d1}: this unit's block is not estimable "
        "from the probe, so s, k and the corrected mean above are NOT measurements of the "
        "unit (they check the identities, which hold for any block). Use a larger probe."
    )
print(
    f"shift: natural {shift.shift_natural[unit]:.4g}, block-diagonal "
    f"{shift.shift_blockdiag[unit]:.4g}, plain {shift.shift_plain[unit]:.4g}"
)
print(f"cos(g, F⁻¹g) = {cosine:.4g}")
# Two float64 routes through solves agree to C·κ·ε (κ the block's exact condition number).
rtol = conditioned_rtol(fisher.condition_number()[unit])
assert_close(s_schur, s_paper, what="Lemma 2(i)", rtol=rtol)
assert_close(k_closed, k_paper, what="two forms of k", rtol=rtol)
assert s_schur * fisher.c[unit] >= 1.0
# Theorem 2: the natural gradient's bias shift is E_p(a)ᵀΔw + Δw0.
assert_close(shift.shift_natural[unit], mean_p @ dw[unit] + dw0[unit], rtol=rtol)
assert 0.0 < cosine <= 1.0

# %% [markdown]
# ## How close is the plain gradient to the unit natural gradient?
#
# The Euclidean cosine above is not invariant: rescale an incoming activation and it changes.
# The **Fisher efficiency** ρ(u) = gᵀu / √(uᵀF_λu · gᵀF_λ⁻¹g) is the cosine between an update u
# and the natural gradient in the Fisher metric (ρ = 1 for the natural gradient). It is judged
# in F_λ = F + λ·tr(F)/(d+1)·I with one stated relative damping λ. We compare the plain
# gradient, the plain step on centred inputs, Ollivier's quasi-diagonal update and the
# block-diagonal update (the weight–bias coupling b set to 0, Theorem 2's comparison). n_eff is
# the number of probe inputs the δ̄²-weighted moments really rest on.

# %%
lam = MEASURE_DAMPING
rho = {
    k: fisher.efficiency(gw, gb, k, rel_damping=lam)[unit]
    for k in ("plain", "centred", "quasidiagonal", "blockdiag", "natural")
}
print({k: round(float(v), 4) for k, v in rho.items()}, f"λ = {lam:g}")
print(f"n_eff = {fisher.n_eff[unit]:.1f} for d + 1 = {fisher.fan_in + 1}")
assert_close(rho["natural"], torch.tensor(1.0, dtype=torch.float64))
assert all(-1.0 <= float(v) <= 1.0 + 1e-12 for v in rho.values())
assert 1.0 <= fisher.n_eff[unit] <= x.shape[0]

# %% [markdown]
# ## Over training
#
# The same quantities for every unit of the layer at each checkpoint (epoch 0 is the
# initial net), from `natgrad.analysis.unitstats.unit_statistics` — the function behind the
# demo's tables (a pandas DataFrame, one row per unit).

# %%
rows = {e: unit_statistics(load_model(run, e), x, y, layers=[layer]) for e in epochs}
fig, axes = plt.subplots(1, 3, figsize=(9, 2.8))
for ax, col in zip(axes, ("mean_q_norm", "rho_plain", "rho_centred"), strict=True):
    ax.boxplot([rows[e][col][rows[e]["dead"] == 0] for e in epochs])
    ax.set_xticks(range(1, len(epochs) + 1), [str(e) for e in epochs])
    ax.plot(
        range(1, len(epochs) + 1), [rows[e][col][unit] for e in epochs], "o-", label=f"unit {unit}"
    )
    ax.set(xlabel="epoch", title=col)
axes[0].legend()
fig.tight_layout()
plt.show()
for e in epochs:
    t = rows[e]
    assert len(t) == 128 and t["layer"].unique().tolist() == [layer]
rtol_l = conditioned_rtol(fisher.condition_number(rel_damping=lam)[unit])
assert_close(
    torch.tensor(rows[3]["rho_plain"][unit]),
    rho["plain"],
    what="table vs UnitFisher.efficiency",
    rtol=rtol_l,
)

# %% [markdown]
# ## Which probe
#
# A block is *estimable* where its effective sample size n_eff ≥ 2(d+1) (docs/theory.md,
# "Effective sample size"). The held-out probe above is the default; the inputs the run
# trained on (`probe_set(run, split="train-all")`, `natgrad tables --probe train-all`) give
# the Fisher of the training objective itself. The same layer at the last epoch on both:

# %%
x_train, _ = probe_set(run, split="train-all")
for name, inputs in (("held out (256 test inputs)", x), (f"training ({len(x_train)})", x_train)):
    f = unit_fisher(model, layer, inputs.to(torch.float64))
    ratio = f.n_eff / (f.fan_in + 1)
    live = ratio[~ratio.isnan()]
    print(
        f"{name:>28}: median n_eff/(d+1) {live.median():.2f}, "
        f"estimable {(live >= 2).double().mean():.0%} of {len(live)} live units"
    )
    assert len(live) > 0
shutil.rmtree(workdir)  # the run folder in the system temp directory goes with the notebook
