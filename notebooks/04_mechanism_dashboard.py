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
# # The mechanism dashboard, and inside one unit's block
#
# `analysis/mechanism_dashboard.py` trains mnist-fc (3 × 64) on MNIST with ELU, ReLU, SELU and
# GELU, each with no normalisation, centring, batch norm or layer norm, 5 seeds, and records
# along training the units' mean activations, ρ(plain), Theorem 2's bias-shift error and k, the
# Fisher mass outside the unit blocks and the largest eigenvalue. Its figure and tables are
# committed in `paper_figures/results/mechanism_dashboard_mnist/`.
#
# Below: the dashboard's figure and its ELU − ReLU table, then **pick a checkpoint (arm, seed,
# epoch), a layer and a unit** and look inside that unit's Fisher block. The dashboard's run
# directories are not committed (they are rebuilt by the study script); where they are absent
# this notebook trains the chosen arm on scikit-learn's digits for one epoch (seconds), so
# every cell runs anywhere.

# %%
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display
from torch.nn import functional as F

from natgrad.analysis.csvtables import read_csv
from natgrad.analysis.runs import load_model, probe_set
from natgrad.damping import MEASURE_DAMPING
from natgrad.fisher import unit_fisher
from natgrad.measures import measures
from natgrad.testing import assert_close
from natgrad.training import train

ROOT = Path.cwd() if (Path.cwd() / "natgrad").is_dir() else Path.cwd().parent
RESULTS = ROOT / "paper_figures" / "results" / "mechanism_dashboard_mnist"
RUNS = ROOT / "runs" / "mechanism_dashboard"
if (RESULTS / "dashboard.png").is_file():
    display(Image(filename=str(RESULTS / "dashboard.png"), width=900))
    table = read_csv(RESULTS / "elu_vs_relu.csv")
    display(table[["norm", "metric", "diff", "lo", "hi", "p_holm"]].round(4))
else:
    print("the dashboard's results are not in this checkout:", RESULTS)

# %% [markdown]
# ## Is ELU's plain gradient nearer the unit natural gradient? The records, side by side
#
# ELU − ReLU in ρ(plain) at epoch 3 (higher: ELU nearer), with 95 % CIs: the exploratory
# record (seeds 0–4, BCa, descriptive), the first confirmatory run (seeds 5–14, median over live
# units), the second (seeds 15–24, median over estimable units only, declared after the first
# found fewer of ReLU's units estimable) and the third (without normalisation only, 100 seeds
# 25–124, both medians, declared after the first two resolved different things there). Each
# confirmatory run's README states its declared rule and reading.

# %%
FOREST = {  # record: (folder, metric)
    "exploratory, seeds 0–4": ("mechanism_dashboard_mnist", "rho_plain_jk"),
    "confirmation, live units, seeds 5–14": ("mechanism_dashboard_mnist_confirm", "rho_plain_jk"),
    "confirmation, estimable units, seeds 15–24": (
        "mechanism_dashboard_mnist_confirm_estimable", "rho_plain_jk_est"),
    "confirmation, live units, seeds 25–124": ("mechanism_dashboard_mnist_confirm_none",
                                              "rho_plain_jk"),
    "confirmation, estimable units, seeds 25–124": ("mechanism_dashboard_mnist_confirm_none",
                                                   "rho_plain_jk_est"),
}  # fmt: skip
NORM_NAMES = {"none": "none", "centred": "centring", "bn": "batch norm", "ln": "layer norm"}
fig, ax = plt.subplots(figsize=(9.5, 3.8))
for k, (label, (folder, metric)) in enumerate(FOREST.items()):
    path = ROOT / "paper_figures" / "results" / folder / "elu_vs_relu.csv"
    if not path.is_file():
        continue
    t = read_csv(path).set_index(["norm", "metric"])
    for i, norm in enumerate(NORM_NAMES):
        if (norm, metric) not in t.index:  # the third run has no normalisation only
            continue
        r = t.loc[(norm, metric)]
        y = i + (k - 2) * 0.16
        ax.errorbar(r["diff"], y, xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], fmt="o",
                    color=f"C{k}", ms=4, capsize=2, label=label if i == 0 else None)  # fmt: skip
ax.axvline(0, color="0.5", lw=0.8)
ax.set_yticks(range(len(NORM_NAMES)), list(NORM_NAMES.values()))
ax.invert_yaxis()
ax.set_xlabel("ELU − ReLU in ρ(plain) at epoch 3 (95 % CI)")
ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
fig.tight_layout()
plt.show()


# %% [markdown]
# ## Does the nearer plain gradient learn faster?
#
# `analysis/mechanism_speed.py`, declared before its runs: the third confirmation's 200 runs
# (3 × 64) resumed from epoch 3 to 10, and a replication on the paper's 8 × 128 net (100 new
# seeds, trained from scratch). Each point is a seed: how much nearer ELU's plain gradient was
# than ReLU's at epoch 3 (x) against how much further ELU's training loss fell than ReLU's from
# epoch 3 to 10 (y; below 0: ReLU's fell further). The mechanism predicts a rising cloud; the
# tables hold the declared endpoints and the levels beside them.

# %%
from natgrad.analysis.report import ci_text, p_text

SPEED = {"3 × 64": "mechanism_speed_mnist", "8 × 128 (the paper's net)": "mechanism_speed_mnist_8x128"}
fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.4), sharey=True)
for ax, (net, folder) in zip(axes, SPEED.items()):
    path = ROOT / "paper_figures" / "results" / folder
    if not (path / "per_run.csv").is_file():
        fig.delaxes(ax)
        continue
    wide = read_csv(path / "per_run.csv").pivot(index="seed", columns="arm")
    d_rho = wide["rho_plain_jk"]["elu"] - wide["rho_plain_jk"]["relu"]
    d_fall = wide["log_fall"]["elu"] - wide["log_fall"]["relu"]
    ax.scatter(d_rho, d_fall, s=10, color="0.3")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set(title=net, xlabel="ELU − ReLU in ρ(plain), epoch 3")
    eps = read_csv(path / "endpoints.csv")
    print(net)  # as the record's README prints them: CI ends outward, a p at its floor as "≤"
    for r in eps.to_dict("records"):
        print(f"  {r['family']:>9}  {r['endpoint']:<38} {ci_text(r['value'], r['lo'], r['hi'])}"
              f"  Holm p {p_text(r['p_holm'], r['p_at_floor'])}")
    assert (eps["family"] == "primary").sum() >= 2 and (eps["n"] == 100).all()
axes[0].set_ylabel("ELU − ReLU in the fall of\nlog10 loss, epoch 3 → 10")
fig.tight_layout()
plt.show()


# %% [markdown]
# ## Pick a checkpoint and a unit
#
# `ARM` is one of the dashboard's 16 arms (`elu`, `relu-bn`, `gelu-ln`, `selu-centred`, …).
# The layers fed by hidden units are `fc2`, `fc3` and `fc4` (the output layer).

# %%
ARM, SEED, EPOCH, LAYER, UNIT = "elu-bn", 0, 1, "fc2", 0


def checkpoint(arm: str, seed: int) -> Path:
    """The dashboard's run of ``arm`` and ``seed`` if it is here, else a one-epoch run of the
    same arm on the digits (in a temporary folder)."""
    run = RUNS / f"{arm}-s{seed}"
    if (run / "metrics.jsonl").is_file():
        return run
    from natgrad.studies.mechanism_dashboard import config  # the study's declaration

    cfg = replace(config(arm, seed), dataset="digits", epochs=1, probe_size=64)
    tmp = Path(tempfile.mkdtemp(prefix="natgrad-nb04-"))
    return train(cfg, tmp / run.name, device="cpu", progress=False).run_dir


def inside(arm: str, seed: int, epoch: int, layer: str, unit: int) -> dict:
    """The unit's block on the first 2,000 validation inputs (or all held-out inputs of the
    digits), its means, Theorem 2's terms and the Fisher efficiency of four directions."""
    run = checkpoint(arm, seed)
    epoch = min(epoch, max(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("*.json")))
    model = load_model(run, epoch).double().eval()
    x, y = probe_set(run, 2000)
    x = x.double()
    fisher = unit_fisher(model, layer, x)
    unit = min(int(unit), fisher.num_units - 1)
    module = dict(model.named_modules())[layer]
    gw, gb = torch.autograd.grad(-F.cross_entropy(model(x), y), [module.weight, module.bias])
    g, g0 = fisher.unit_grads(gw, gb)
    m = measures(fisher.matrix, fisher.mean_p, g, g0, MEASURE_DAMPING, layer=layer)
    block = fisher.matrix[unit]
    # Theorem 2 at the unit's own μ = λ·tr F/(d+1) (λ = MEASURE_DAMPING): a ReLU net's blocks
    # are often singular (dead units, inputs that never vary), where the undamped solve fails
    scale = fisher.matrix.diagonal(dim1=-2, dim2=-1).sum(-1) / (fisher.fan_in + 1)
    mu = MEASURE_DAMPING * float(scale[unit] if scale[unit] > 0 else scale.mean())
    shift = fisher.bias_shift(gw, gb, damping=mu)
    out = {
        "run": run.name,
        "epoch": epoch,
        "block": block,
        "mean_p": fisher.mean_p,
        "mean_q": fisher.mean_q[unit],
        "k": float(fisher.k(damping=mu)[unit]),
        "n_eff_over_d1": float(fisher.n_eff[unit]) / (fisher.fan_in + 1),
        "rho": {
            d: float(m[f"rho_{d}"][unit])
            for d in ("plain", "centred", "quasidiagonal", "blockdiag")
        },  # fmt: skip
        "shift": {
            k: float(getattr(shift, f"shift_{k}")[unit]) for k in ("natural", "blockdiag", "plain")
        },  # fmt: skip
    }
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    im = axes[0].imshow(block.abs().clamp_min(1e-12).log10(), cmap="viridis")
    axes[0].set_title(f"log10 |F|, {layer} unit {unit} (bias last)", fontsize=9)
    fig.colorbar(im, ax=axes[0])
    axes[1].semilogy(torch.linalg.eigvalsh(block).flip(0).clamp_min(1e-16), ".")
    axes[1].set_title("eigenvalues of the block", fontsize=9)
    axes[2].scatter(out["mean_p"], out["mean_q"], s=8)
    lim = float(torch.cat([out["mean_p"], out["mean_q"]]).abs().max()) * 1.05
    axes[2].plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
    axes[2].set(xlabel="E_p(a)", ylabel="E_q(a)")
    axes[2].set_title("incoming means (k = 0 on the diagonal)", fontsize=9)
    fig.suptitle(f"{out['run']}, epoch {epoch}: n_eff/(d+1) = {out['n_eff_over_d1']:.1f}, "
                 f"k = {out['k']:.3g}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    plt.show()
    print("Fisher efficiency at λ = 1e-3:", {d: round(v, 3) for d, v in out["rho"].items()})
    print("bias shifts (Theorem 2, F + μI, μ = 1e-3·tr F/(d+1) of the unit):",
          {k: round(v, 4) for k, v in out["shift"].items()})  # fmt: skip
    return out


result = inside(ARM, SEED, EPOCH, LAYER, UNIT)
block = result["block"]
assert_close(block, block.T, what="symmetry")
assert torch.linalg.eigvalsh(block).min() > 0
assert all(-1.0 <= r <= 1.0 for r in result["rho"].values())

# %% [markdown]
# ## Interactively
#
# In a live kernel (`make lab`), the widgets below re-run `inside` for the chosen arm, seed,
# epoch, layer and unit.

# %%
try:
    from ipywidgets import Dropdown, IntSlider, interact_manual

    arms = [
        f"{u}{s}" for s in ("", "-centred", "-bn", "-ln") for u in ("elu", "relu", "selu", "gelu")
    ]
    interact_manual(inside, arm=Dropdown(options=arms, value=ARM), seed=IntSlider(0, 0, 4),
                    epoch=Dropdown(options=[0, 1, 3], value=EPOCH),
                    layer=Dropdown(options=["fc2", "fc3", "fc4"], value=LAYER),
                    unit=IntSlider(UNIT, 0, 63))  # fmt: skip
except ImportError:
    print("ipywidgets is not installed: call inside(arm, seed, epoch, layer, unit) instead")
