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
# # Theorems 1–2 of the ELU paper, interactively
#
# Clevert, Unterthiner & Hochreiter (ICLR 2016), Section 2. For one unit with incoming
# activations $a \in \mathbb{R}^d$ and bias **last**, the unit Fisher block is
#
# $$F = E_p[\bar\delta^2 \tilde a \tilde a^\top] = \begin{pmatrix} A & b \\ b^\top & c \end{pmatrix},
# \quad c = E_p(\bar\delta^2),\ b = E_p(\bar\delta^2 a),\ A = E_p(\bar\delta^2 a a^\top).$$
#
# **Theorem 1** gives the unit natural gradient $F^{-1}(g, g_0)$ through
# $s = 1/(c - b^\top A^{-1} b) = E_p(\bar\delta^2)^{-1}(1 + E_q(a)^\top \mathrm{Var}_q(a)^{-1} E_q(a))$.
# **Theorem 2** says its bias shift $E_p(a)^\top \Delta w + \Delta w_0$ is that of the
# block-diagonal update after the incoming mean is corrected to $E_p(a) - (1+k)E_q(a)$, with
# $k = (E_q(a) - E_p(a))^\top \mathrm{Var}_q(a)^{-1} E_q(a)$. If $\bar\delta^2$ and $a$ are
# uncorrelated, $k = 0$ and the mean is corrected to zero: the natural gradient acts as if the
# incoming activations were centred, which is the argument for units (ELUs) whose mean
# activation is close to zero.

# %%
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Math, display

from natgrad.symbolic import format_table, verify_all
from natgrad.testing import assert_close
from natgrad.unitfisher import UnitFisher

torch.set_default_dtype(torch.float64)

# %% [markdown]
# ## The hand-checkable case
# One input $a \in \{0, 2\}$ with probability ½ each, $\bar\delta^2 \equiv 1$, gradient
# $g = 1$, $g_0 = 0$: $F = [[2, 1], [1, 1]]$, $s = 2$, $k = 0$, $F^{-1}(1, 0) = (1, -1)$,
# shift_natural = 0, shift_blockdiag = ½.

# %%
hand = UnitFisher.from_matrix(torch.tensor([[2.0, 1.0], [1.0, 1.0]]), torch.tensor([1.0]))
g, g0 = torch.tensor([[1.0]]), torch.tensor([0.0])
dw, dw0 = hand.natural_gradient(g, g0)
shift = hand.bias_shift(g, g0)
print(f"s = {hand.s().item()} (Schur) = {hand.s('paper').item()} (paper), k = {hand.k().item()}")
print(f"F⁻¹(1, 0) = ({dw.item():.4g}, {dw0.item():.4g})")
print(
    f"shifts: natural {shift.shift_natural.item():.4g}, block-diagonal {shift.shift_blockdiag.item():.4g}, plain {shift.shift_plain.item():.4g}"
)
assert_close(hand.s(), torch.tensor([2.0]), what="s")
assert_close(hand.s("paper"), hand.s("schur"), what="both forms of s")
assert_close(hand.k("paper"), hand.k("closed"), what="both forms of k")
assert_close(torch.stack([dw[0, 0], dw0[0]]), torch.tensor([1.0, -1.0]), what="F⁻¹(1, 0)")
assert_close(shift.shift_natural, torch.tensor([0.0]), what="shift_natural")
assert_close(shift.shift_blockdiag, torch.tensor([0.5]), what="shift_blockdiag")


# %% [markdown]
# ## A synthetic population
# $n$ inputs with activations $a \sim \mathcal N(\mu \mathbf 1, I_d)$ and error weights
# $\bar\delta^2 = \exp(\gamma z + \xi/2 - \gamma^2/2 - 1/8)$, where $z$ is the standardised
# mean of $a$ and $\xi \sim \mathcal N(0, 1)$ is independent of $a$: $\gamma$ couples
# $\bar\delta^2$ to $a$ ($\gamma = 0$: $\bar\delta^2$ still varies but is independent of $a$,
# so $q = p$ in the population limit). (Not ρ: in natgrad ρ is the Fisher efficiency below.)
# The gradient $(g, g_0)$ is fixed.
# `UnitFisher.from_matrix` wraps the block; everything below is its methods.
#
# Two ways to say how far the plain gradient is from the natural gradient: the Euclidean
# cosine between them, which depends on how the unit is parametrised (it reads out the spread
# of A's eigenvalues), and the **Fisher efficiency** ρ = gᵀu/√(uᵀFu·gᵀF⁻¹g), the cosine in the
# Fisher metric, invariant to reparametrising the unit; natgrad reports ρ.


# %%
def population(mean: float, gamma: float, d: int, n: int = 4000, seed: int = 0) -> UnitFisher:
    """The unit Fisher block of one unit fed by the synthetic population."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=gen) + mean  # [n, d]
    z = (a.mean(-1) - mean) * d**0.5  # standardised, [n]
    xi = torch.randn(n, generator=gen)  # independent of a
    w = torch.exp(gamma * z + xi / 2 - gamma**2 / 2 - 1 / 8)  # δ̄², mean 1, [n]
    at = torch.cat([a, torch.ones(n, 1)], -1)  # [n, d+1]
    F = (w[:, None] * at).T @ at / n
    return UnitFisher.from_matrix((F + F.T) / 2, a.mean(0), layer="synthetic")


def gradient(d: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, d, generator=gen), torch.randn(1, generator=gen)


def explore(mean: float = 1.0, gamma: float = 0.5, d: int = 3) -> None:
    """Print s, k, the corrected mean and the three bias shifts; plot the shifts."""
    fisher = population(mean, gamma, d)
    g, g0 = gradient(d)
    r = fisher.bias_shift(g, g0)
    print(f"s = {fisher.s().item():.4f} (Schur) = {fisher.s('paper').item():.4f} (paper)")
    print(f"k = {fisher.k().item():.4f} (closed) = {fisher.k('paper').item():.4f} (paper)")
    print(
        f"E_p(a) = {fisher.mean_p.numpy().round(3)},  E_q(a) = {fisher.mean_q[0].numpy().round(3)}"
    )
    print(f"corrected mean E_p(a) − (1+k)E_q(a) = {r.corrected_mean[0].numpy().round(3)}")
    print(f"cos(plain, natural) = {fisher.cosine(g, g0).item():.4f} (Euclidean, not invariant)")
    print(
        f"ρ(plain) = {fisher.efficiency(g, g0, 'plain').item():.4f} (Fisher efficiency, invariant)"
    )
    names = ["natural", "block-diagonal", "plain"]
    values = [r.shift_natural.item(), r.shift_blockdiag.item(), r.shift_plain.item()]
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.barh(names, values, color=["C0", "C1", "C2"])
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("bias shift of the update")
    ax.set_title(f"mean {mean:+.2f}, γ = {gamma:.2f}, d = {d}")
    plt.show()


explore()  # once directly, so the output also appears when run headless

# %%
sliders = widgets.interactive(
    explore,
    mean=widgets.FloatSlider(value=1.0, min=-2.0, max=2.0, step=0.1, description="E_p(a)"),
    gamma=widgets.FloatSlider(value=0.5, min=-1.0, max=1.0, step=0.05, description="γ (δ̄²–a)"),
    d=widgets.IntSlider(value=3, min=1, max=8, description="d"),
)
display(sliders)

# %% [markdown]
# ## The ELU argument: a centred incoming mean needs no correction
# Sweep the incoming mean. With $\gamma = 0$, $k \approx 0$ (exactly 0 in the population
# limit), $E_q(a) \approx E_p(a)$, and the plain gradient agrees with the natural gradient
# best when the incoming mean is near 0 — in the Fisher efficiency ρ (middle) as in the
# Euclidean cosine (right). With $\gamma = 0.5$ the best mean moves to about −0.3: there
# $E_q(a) \approx 0$, not $E_p(a)$. The theorems ask for a zero $q$-mean; a zero mean
# activation gives it only where $\bar\delta^2$ does not vary with $a$, which is the gap in
# the ELU argument that the trained-net studies measure.

# %%
means = torch.linspace(-2, 2, 41)
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
for gamma in (0.0, 0.5):
    fishers = [population(m.item(), gamma, 3) for m in means]
    g, g0 = gradient(3)
    axes[0].plot(means, [f.k().item() for f in fishers], label=f"γ = {gamma}")
    axes[1].plot(
        means, [f.efficiency(g, g0, "plain").item() for f in fishers], label=f"γ = {gamma}"
    )
    axes[2].plot(means, [f.cosine(g, g0).item() for f in fishers], label=f"γ = {gamma}")
axes[0].set(xlabel="incoming mean", ylabel="k")
axes[1].set(xlabel="incoming mean", ylabel="ρ(plain): Fisher efficiency")
axes[2].set(xlabel="incoming mean", ylabel="cos(plain, natural): Euclidean")
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()

uncorrelated = population(1.5, 0.0, 3, n=20000)
assert abs(uncorrelated.k().item()) < 0.05, "k ≈ 0 when δ̄² and a are uncorrelated"
assert population(1.5, 0.5, 3, n=20000).k().item() > 1.0, "k far from 0 when they are not"
g, g0 = gradient(3)
for gamma in (0.0, 0.5):  # where ρ(plain) peaks, the q-mean is near 0 (the p-mean need not be)
    fishers = [population(m.item(), gamma, 3) for m in means]
    best = max(range(len(means)), key=lambda i: fishers[i].efficiency(g, g0, "plain").item())
    e_q = fishers[best].mean_q[0].abs().max().item()
    print(f"γ = {gamma}: ρ(plain) peaks at E_p(a) = {means[best].item():+.1f}, |E_q(a)| ≤ {e_q:.3f}")
    assert e_q < 0.1

# %% [markdown]
# ## The SymPy proofs
# `natgrad verify` checks every identity exactly for fully symbolic blocks (here d = 1, 2;
# the CLI also runs d = 3), the unit facts and the Gaussian mean maps.

# %%
results = verify_all(quick=True)
statements = {r.statement: r.name for r in results}  # one line per distinct statement
for statement, name in statements.items():
    display(Math(rf"\text{{{name}}}:\quad {statement}"))
print(format_table(results))
assert all(r.holds for r in results)
