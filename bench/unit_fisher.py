r"""Benchmark: exact unit Fisher of one 512→512 Linear layer, natgrad against its peers.

Model (float32, CPU): 784 → Linear → ELU → Linear(512→512) → ELU → Linear → 10 logits, the
target is the middle Linear ``"2"`` (U = 512 units, d + 1 = 513). N = 2048 random inputs,
categorical likelihood (C = 10), exact Fisher (closed-form expectation over y ~ p(y|z)).

Methods, each in a fresh subprocess (same seeds, same threads):

- ``natgrad``: ``natgrad.fisher.unit_fisher(model, "2", x)``.
- ``asdl``: ASDL ``FisherConfig(FISHER_EXACT, [SHAPE_UNIT_WISE], LOSS_CROSS_ENTROPY)`` with the
  other layers ignored; one backward and one unit-wise covariance per class.
- ``backpack``: BackPACK ``SqrtGGNExact`` (other parameters frozen) → per-class per-sample
  √GGN ``[C, n, U, d]`` and ``[C, n, U]``, combined to ``[U, C·n, d+1]`` and one batched
  GEMM for all unit blocks. Its √GGN of the full batch would take C·N·U·d·4 B = 21 GB, so it
  runs on chunks of ``--backpack-chunk`` inputs (time is linear in N).
- ``reference``: ``natgrad.reference.reference_unit_fisher`` (float64, per-sample, per-label
  autograd) on ``--ref-n`` inputs, time scaled linearly to N.
- ``floor``: one torch matmul with natgrad's FLOP count 2·N·U·(d+1)²,
  ``[U·(d+1), N] @ [N, d+1]``.

Time: median of ``--repeats`` runs after a warm-up on a small batch (operands built
outside the timer). Peak memory: the subprocess's peak resident set size during the first
full-size run (``VmHWM``, reset just before it) less its resident set size just before it;
it counts every byte the method touches in host memory (allocator caches included), the
result's U·(d+1)² floats (539 MB in float32) among them. Without the reset the warm-up's
peak (it builds a result of the same size) hid most of it.
Agreement: the first 16 unit blocks of each method against natgrad's (max |diff| / max |F|);
the reference is compared with natgrad on its own subsample.

Run ``python bench/unit_fisher.py`` (``make bench``); ``--quick`` for a small smoke run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import asdl_unit_fisher, peak_rss, reset_peak_rss, rss
from torch import nn

METHODS = ("natgrad", "asdl", "backpack", "reference", "floor")
D_IN, WIDTH, CLASSES, LAYER = 784, 512, 10, "2"
CHECK_UNITS = 16


def build(n: int, dtype=torch.float32):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(D_IN, WIDTH),
        nn.ELU(),
        nn.Linear(WIDTH, WIDTH),
        nn.ELU(),
        nn.Linear(WIDTH, CLASSES),
    ).to(dtype)
    x = torch.randn(n, D_IN, dtype=dtype)
    return model, x


# --- the methods: each returns the [U, d+1, d+1] blocks (or None for the floor) --------


def run_natgrad(model, x, args):
    from natgrad.fisher import unit_fisher

    return unit_fisher(model, LAYER, x).matrix


def run_asdl(model, x, args):
    return asdl_unit_fisher(model, x, model[2], [model[0], model[4]])


def run_backpack(model, x, args):
    from backpack import backpack, extend
    from backpack.extensions import SqrtGGNExact

    layer = model[2]
    for p in model.parameters():
        p.requires_grad_(p is layer.weight or p is layer.bias)
    model = extend(model)
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    n_units, d = layer.weight.shape
    total = torch.zeros(n_units, d + 1, d + 1, dtype=x.dtype)
    for xc in x.split(args.backpack_chunk):
        out = model(xc)
        y = torch.zeros(xc.shape[0], dtype=torch.long)  # the exact √GGN does not use y
        with backpack(SqrtGGNExact()):
            loss_fn(out, y).backward()
        vw = layer.weight.sqrt_ggn_exact  # [C, n, U, d]
        vb = layer.bias.sqrt_ggn_exact  # [C, n, U]
        g = torch.cat([vw, vb.unsqueeze(-1)], dim=-1)  # [C, n, U, d+1]
        g = g.permute(2, 0, 1, 3).reshape(n_units, -1, d + 1)  # [U, C·n, d+1]
        total.baddbmm_(g.transpose(1, 2), g)
        del layer.weight.sqrt_ggn_exact, layer.bias.sqrt_ggn_exact, g, vw, vb
    return total / x.shape[0]


def run_reference(model, x, args):
    from natgrad.reference import reference_unit_fisher

    return reference_unit_fisher(model, LAYER, x[: args.ref_n]).matrix


#: Largest ``agree`` a method may have and still be ranked: (float32 peers, float64 reference).
AGREE_TOL = {False: 1e-5, True: 1e-10}


def floor_operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The floor GEMM's random operands for ``n`` inputs (built outside the timer)."""
    g, d1 = torch.Generator().manual_seed(1), WIDTH + 1
    return torch.randn(WIDTH * d1, n, generator=g), torch.randn(n, d1, generator=g)


def run_floor(model, x, args):
    a, b = args.operands if getattr(args, "operands", None) else floor_operands(x.shape[0])
    return (a @ b).view(WIDTH, WIDTH + 1, WIDTH + 1)


RUNNERS = {
    "natgrad": run_natgrad,
    "asdl": run_asdl,
    "backpack": run_backpack,
    "reference": run_reference,
    "floor": run_floor,
}


def child(args) -> None:
    """Run one method in this (fresh) process and write its measurements as JSON."""
    torch.set_num_threads(args.threads)
    method = args.child
    runner = RUNNERS[method]
    result: dict = {"method": method}
    try:
        model, x_small = build(min(64, args.n))
        warm = argparse.Namespace(**{**vars(args), "ref_n": 2})
        runner(model, x_small, warm)  # warm-up (imports, first-call overheads)
        model, x = build(args.n)
        if method == "floor":
            args.operands = floor_operands(args.n)
        rss0 = rss()
        result["peak_reset"] = reset_peak_rss()
        times = []
        for r in range(args.repeats):
            if method in ("asdl", "backpack"):
                model, x = build(args.n)  # fresh, un-extended model for every repeat
            t0 = time.perf_counter()
            out = runner(model, x, args)
            times.append(time.perf_counter() - t0)
            if r == 0:
                result["peak_mb"] = (peak_rss() - rss0) / 2**20
                if out is not None and method != "floor":
                    np.save(args.out, out[:CHECK_UNITS].detach().double().numpy())
            if method in ("asdl", "backpack", "reference") and times[-1] > args.slow_after:
                break  # one slow repeat is enough to rank it; say so in the table
            del out
        result["times"] = times
        if method == "reference":
            from natgrad.fisher import unit_fisher

            ng = unit_fisher(build(args.n, torch.float64)[0], LAYER, x[: args.ref_n].double())
            ref = np.load(args.out)
            fast = ng.matrix[:CHECK_UNITS].numpy()
            result["agree"] = float(np.abs(ref - fast).max() / np.abs(fast).max())
            result["scale"] = args.n / min(args.ref_n, args.n)
    except Exception as exc:  # report and let the parent continue
        result["error"] = f"{type(exc).__name__}: {exc}"
    Path(args.json).write_text(json.dumps(result))


def parent(args) -> int:
    print(
        f"exact unit Fisher, Linear {WIDTH}->{WIDTH} (layer {LAYER!r}) of "
        f"{D_IN}-{WIDTH}-ELU-{WIDTH}-ELU-{CLASSES}, N={args.n}, C={CLASSES}, float32, "
        f"CPU, torch {torch.__version__}, {args.threads} thread(s), repeats={args.repeats}"
    )
    flops = 2 * args.n * WIDTH * (WIDTH + 1) ** 2
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            out, js = os.path.join(tmp, f"{method}.npy"), os.path.join(tmp, f"{method}.json")
            cmd = [sys.executable, __file__, "--child", method, "--out", out, "--json", js]
            cmd += ["--n", str(args.n), "--repeats", str(args.repeats)]
            cmd += ["--threads", str(args.threads), "--ref-n", str(args.ref_n)]
            cmd += ["--backpack-chunk", str(args.backpack_chunk)]
            cmd += ["--slow-after", str(args.slow_after)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if not os.path.exists(js):
                rows[method] = {"error": f"crashed (rc {proc.returncode}): {proc.stderr[-300:]}"}
                continue
            rows[method] = json.loads(Path(js).read_text())
            if method != "reference" and os.path.exists(out):  # the reference's is checked
                rows[method]["blocks"] = np.load(out)  # in its child, on its subsample
    base = rows.get("natgrad", {}).get("blocks")
    print(
        f"\n{'method':<10} {'time [s]':>10} {'runs':>5} {'peak RSS [MB]':>14} {'agree':>10}  note"
    )
    med, wrong = {}, {}
    for method in args.methods:
        r = rows[method]
        if "error" in r:
            print(f"{method:<10} {'-':>10} {'-':>5} {'-':>14} {'-':>10}  FAILED: {r['error']}")
            continue
        t = statistics.median(r["times"]) * r.get("scale", 1.0)
        med[method] = t
        note = ""
        err = math.nan
        if method == "reference":
            note = f"measured on {args.ref_n} inputs, scaled x{r['scale']:g}"
            err = r["agree"]
        elif method == "floor":
            note = f"{flops / t / 1e9:.1f} GFLOP/s"
        elif method != "natgrad" and base is not None and "blocks" in r:
            err = float(np.abs(r["blocks"] - base).max() / np.abs(base).max())
        agree = "" if math.isnan(err) else f"{err:.1e}"
        if method == "backpack":
            note = f"chunks of {args.backpack_chunk} inputs"
        if not r.get("peak_reset", True):
            note += "; peak RSS since process start (clear_refs refused): not comparable"
        if err > AGREE_TOL[method == "reference"]:  # a fast wrong answer ranks nothing
            note, wrong[method] = f"WRONG: disagrees with natgrad; {note}", err
            del med[method]
        print(
            f"{method:<10} {t:>10.3f} {len(r['times']):>5} {r.get('peak_mb', float('nan')):>14.0f}"
            f" {agree:>10}  {note}"
        )
    print(
        "\nagree = max |F_method - F_natgrad| / max |F_natgrad| over the first 16 unit blocks; "
        f"above {AGREE_TOL[False]:g} (float32; the reference in float64: "
        f"{AGREE_TOL[True]:g}) a method is marked WRONG and left out of the ratios"
    )
    print("ratios (time):")
    for num, den in (
        ("asdl", "natgrad"),
        ("backpack", "natgrad"),
        ("natgrad", "floor"),
        ("reference", "natgrad"),
    ):
        if num in med and den in med:
            print(f"  {num}/{den}: {med[num] / med[den]:.2f}")
        elif num in args.methods and den in args.methods:
            why = "WRONG" if num in wrong or den in wrong else "failed"
            print(f"  {num}/{den}: NOT MEASURED ({why})")
    if "natgrad" in med and "floor" in med:  # issue 24, item 4
        r = med["natgrad"] / med["floor"]
        why = ("" if r <= 0.7 else " -- why: natgrad accumulates only the upper block triangle "
               "(row blocks of 64, about half the flops), but the batched GEMMs of those row "
               "blocks run below the full GEMM's rate on this CPU")  # fmt: skip
        print(f"target: natgrad <= 0.7x the full GEMM floor: {'MET' if r <= 0.7 else 'NOT MET'} "
              f"({r:.2f}x){why}")  # fmt: skip
    elif "natgrad" in args.methods and "floor" in args.methods:
        print("target: natgrad <= 0.7x the full GEMM floor: NOT MEASURED")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048, help="inputs N (default 2048)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--ref-n", type=int, default=16, help="inputs for the reference route")
    p.add_argument("--backpack-chunk", type=int, default=128, help="inputs per BackPACK pass")
    p.add_argument(
        "--slow-after", type=float, default=60.0, help="baselines slower than this run once"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--quick", action="store_true", help="N=256, 2 repeats: a smoke run")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 256, 2
    if args.child:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
