r"""Benchmark: a grid of runs trained as one batched model against the same runs one by one.

1. **A 12-run grid** (the paper's four units of ``natgrad demo``, 3 seeds): mnist-fc on the
   8×8 digits, units ELU/ReLU/LReLU/SReLU × ``--seeds`` seeds, ``--epochs`` epochs, SGD lr 0.01, batch 64,
   probe 512, checkpoint every 5 epochs; float32, CPU, ``--threads`` torch threads. Timed:
   ``[train(c) for c in configs]`` and ``train_grid(configs)``, each writing its run
   directories (records, metrics, checkpoints: the whole job, not only the steps), in the
   same process after a warm-up run, alternating ``--repeats`` times; median wall times and
   their ratio. Agreement: the largest difference of the final test losses.
2. **The training phase of the digits mode, ``natgrad demo --dataset digits``** (7 unit
   types × 8 seeds = 56 runs, 20 epochs, 2 worker processes of one thread): the demo's own jobs
   (:func:`natgrad.training.plan.train_plan`: per worker, one grid of the runs without and
   one of the runs with batch norm) against every run a job of its own in the same pool
   (the sequential trainer), alternating ``--repeats`` times.
3. **One step** of all R runs (forward, backward, SGD) on the demo grid's shapes: R
   separate modules, the grid's batched model (``torch.baddbmm``), and ``torch.func``
   (``stack_module_state`` + ``functional_call`` + ``vmap(grad)``, one vmap per unit type,
   as vmap cannot vary the activation). Median of ``--step-repeats``.
4. **``natgrad compare``'s SGD arms** with its defaults (ReLU+SGD, ELU+SGD, ReLU+BN, 5 seeds,
   12 epochs on digits): batched (the default) against every run alone, alternating.
5. **Projection of the paper's Fig 2 protocol** on Fashion-MNIST (mnist-fc, 300 epochs,
   5 seeds, ELU/ReLU/LReLU/SReLU, SGD lr 0.01, batch 64): a timed grid of the 20 runs for
   ``--projection-epochs`` epochs and one sequential run for as many epochs, scaled to 300
   epochs (and 20 runs for the sequential one). The cost depends on the shapes only
   (60,000 training and 10,000 test images of 28×28, 10 classes): without the data set in
   ``--fashion-dir``, random images of those shapes are written as IDX files and used.

Run ``python bench/grid_train.py`` (a few minutes on 2 cores); ``--quick`` for a smoke run.
Numbers on a shared machine move with its load: compare ratios from the same run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import call_time
from torch import nn

UNITS = ("elu", "relu", "lrelu", "srelu")


def demo_configs(seeds: int, epochs: int, **extra):
    from natgrad.training import default_config

    return [
        default_config("mnist-fc", dataset="digits", unit=u, seed=s, epochs=epochs,
                       checkpoint_every=5, probe_size=512, **extra)
        for s in range(seeds) for u in UNITS
    ]  # fmt: skip


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_demo(args) -> None:
    from natgrad.training import train
    from natgrad.training.grid import train_grid

    configs = demo_configs(args.seeds, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = demo_configs(1, 1)[:2]
        train_grid(warm, [root / "w0", root / "w1"], device="cpu", progress=False)
        train(warm[0], root / "w2", device="cpu", progress=False)
        seq_t, grid_t = [], []
        for rep in range(args.repeats):
            dirs = [root / f"s{rep}-{i}" for i in range(len(configs))]
            t, seq = timed(lambda d=dirs: [
                train(c, p, device="cpu", progress=False) for c, p in zip(configs, d, strict=True)
            ])  # fmt: skip
            seq_t.append(t)
            dirs = [root / f"g{rep}-{i}" for i in range(len(configs))]
            t, grid = timed(lambda d=dirs: train_grid(configs, d, device="cpu", progress=False))
            grid_t.append(t)
        diff = max(
            abs(a.metrics[-1]["test_loss"] - b.metrics[-1]["test_loss"])
            for a, b in zip(seq, grid, strict=True)
        )
    iters = len(configs) * seq[0].metrics[-1]["iterations"]
    s, g = statistics.median(seq_t), statistics.median(grid_t)
    print(f"demo grid: mnist-fc on digits, {len(UNITS)} units x {args.seeds} seeds = "
          f"{len(configs)} runs x {args.epochs} epochs ({iters} SGD steps in all), "
          f"{torch.get_num_threads()} thread(s), float32, CPU")  # fmt: skip
    print(f"  sequential train() x {len(configs)}: {s:8.2f} s   (all: "
          f"{', '.join(f'{v:.2f}' for v in seq_t)})")  # fmt: skip
    print(f"  train_grid():              {g:8.2f} s   (all: {', '.join(f'{v:.2f}' for v in grid_t)})")  # fmt: skip
    print(f"  speed-up grid vs sequential: {s / g:.2f}x   (target >= 3x)")
    print(f"  agreement: max |final test loss grid - sequential| = {diff:.2e} (float32)")


def bench_demo_default(args) -> None:
    r"""The training phase of ``natgrad demo --dataset digits`` (7 unit types × 8
    seeds of mnist-fc on digits, 20 epochs, 2 worker processes of 1 torch thread): the demo's
    own jobs (one grid per worker for the batchable runs, batch-norm runs one by one) against
    every run a job of its own (the sequential trainer), same pool, alternating."""
    from natgrad.studies.demo import for_dataset, train_configs, workers_of
    from natgrad.training.plan import train_plan

    config = for_dataset("digits", fresh=True) if args.demo_seeds is None else for_dataset(
        "digits", fresh=True, seeds=args.demo_seeds)  # fmt: skip
    cfgs = train_configs(config)
    from natgrad.training.grid import grid_key

    batchable = sum(grid_key(c) is not None for c in cfgs)
    seq_t, grid_t = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for batched, acc in ((False, seq_t), (True, grid_t)):
                dirs = [Path(tmp) / f"{rep}-{batched}-{i}" for i in range(len(cfgs))]
                t0 = time.perf_counter()
                train_plan(cfgs, dirs, workers=workers_of(config), device=config.device,
                           resume=False, threads=config.threads, batched=batched)  # fmt: skip
                acc.append(time.perf_counter() - t0)
    s, g = statistics.median(seq_t), statistics.median(grid_t)
    print(f"natgrad demo --dataset digits training: {len(config.units)} unit types x {config.seeds} "
          f"seeds = {len(cfgs)} runs ({batchable} batchable) x "
          f"{config.epochs} epochs, {workers_of(config)} worker processes x "
          f"{config.threads} thread(s)")  # fmt: skip
    print(f"  every run a job of its own (sequential): {s:8.2f} s   (all: "
          f"{', '.join(f'{v:.2f}' for v in seq_t)})")  # fmt: skip
    print(f"  the demo's jobs (one grid per worker):   {g:8.2f} s   (all: "
          f"{', '.join(f'{v:.2f}' for v in grid_t)})")  # fmt: skip
    print(f"  speed-up: {s / g:.2f}x   (target >= 3x)")


def bench_step(args) -> None:
    """One SGD step of all R runs: separate modules vs baddbmm grid vs torch.func vmap."""
    import copy

    from torch.func import functional_call, grad, stack_module_state, vmap

    from natgrad.training import engine
    from natgrad.training.grid import _Grid

    configs = demo_configs(args.seeds, 1, checkpoint_initial=False)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = {"name": "grid", "runs": len(configs)}
        runs = [engine.open_run(c, Path(tmp) / f"r{i}", cpu, *engine.setup(c, cpu), None, trainer)
                for i, c in enumerate(configs)]  # fmt: skip
    grid = _Grid(runs, torch.device("cpu"))
    r_all, b = grid.R, 64
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, grid.n, (r_all, b), generator=gen)
    xb, yb = grid._gather(0, idx), grid._gather(1, idx)
    models = [r.model for r in grid.runs]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]

    def sequential():
        for m, o, x, y in zip(models, opts, xb, yb, strict=True):
            o.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()

    net = grid.net

    def batched():
        loss = net.losses(net.forward(xb, training=True), xb, yb)
        net.step(torch.autograd.grad(loss.sum(), net.leaves), [0.01] * r_all)

    groups = []  # one torch.func vmap per unit type (vmap cannot vary the module)
    for unit in UNITS:
        members = [i for i, r in enumerate(grid.runs) if r.config.unit == unit]
        base = copy.deepcopy(models[members[0]]).to("meta")
        params, buffers = stack_module_state([models[i] for i in members])

        def loss_fn(p, bufs, x, y, base=base):
            return nn.functional.cross_entropy(functional_call(base, (p, bufs), (x,)), y)

        groups.append((members, params, buffers, vmap(grad(loss_fn))))

    def func_vmap():
        for members, params, buffers, g in groups:
            grads = g(params, buffers, xb[members], yb[members])
            with torch.no_grad():
                torch._foreach_add_(list(params.values()), list(grads.values()), alpha=-0.01)

    # The GEMM floor: the step's three matrix products per layer (forward, both backward
    # products), as bare batched matmuls over the R runs: what no batching can go below.
    shapes = [net.params[n].shape for n in net.names if n in net.transposed]  # [R, in, out]
    mats = [(torch.randn(r_all, b, k), torch.randn(r_all, k, m), torch.randn(r_all, b, m))
            for k, m in (s[1:] for s in shapes)]  # fmt: skip
    flops = sum(3 * 2 * r_all * b * a.shape[2] * w.shape[2] for a, w, _ in mats)

    def floor():
        for a, w, g in mats:
            torch.bmm(a, w)
            torch.bmm(g, w.transpose(1, 2))
            torch.bmm(a.transpose(1, 2), g)

    res = {}
    methods = (("sequential", sequential), ("grid", batched), ("vmap", func_vmap),
               ("GEMM floor", floor))  # fmt: skip
    for _ in range(2):  # interleaved, twice: the last round counts
        for name, fn in methods:
            res[name] = call_time(fn, args.step_repeats, warmup=3)
    print(f"one SGD step of all {r_all} runs (batch {b}, {flops / 1e6:.0f} MFLOP of GEMMs), "
          f"median of {args.step_repeats}:")  # fmt: skip
    for name, _ in methods:
        ratio = res["sequential"] / res[name]
        print(f"  {name:<10} {1e3 * res[name]:8.2f} ms   {ratio:5.2f}x vs sequential   "
              f"{flops / res[name] / 1e9:5.1f} GFLOP/s")  # fmt: skip


def bench_compare(args) -> None:
    r"""``natgrad compare``'s SGD arms with its defaults (ReLU+SGD, ELU+SGD, ReLU+BN; 5 seeds,
    12 epochs of mnist-fc on digits): its pipeline (``train_grid``: one batched model per
    architecture, all seeds together) against every run alone (``train``), alternating, each
    into fresh run directories; agreement of the curves."""
    import tempfile

    from natgrad.studies import compare
    from natgrad.training import train

    config = compare.CompareConfig(arms=("relu-sgd", "elu-sgd", "relu-bn"))
    if args.quick:
        config = compare.CompareConfig(arms=config.arms, epochs=2)

    def batched(root: Path):
        return compare.run_compare(config, root)[0]

    def alone(root: Path):
        for arm in config.arms:
            for seed in config.seed_list:
                train(compare.arm_config(config, arm, seed), root / f"{arm}-s{seed}",
                      progress=False)  # fmt: skip
        return compare.read_curves(config, root)

    times: dict[str, list[float]] = {"alone": [], "batched": []}
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        batched(Path(tmp) / "warm-up")
        for r in range(args.repeats):
            for name, fn in (("alone", alone), ("batched", batched)):
                t, curves[name] = timed(lambda f=fn, p=Path(tmp) / f"{name}{r}": f(p))
                times[name].append(t)
    s, g = statistics.median(times["alone"]), statistics.median(times["batched"])
    diff = max(
        float(((curves["batched"][c] - curves["alone"][c]).abs() / curves["alone"][c].abs()).max())
        for c in ("train_loss", "test_loss")
    )
    print(f"natgrad compare's SGD arms ({', '.join(config.arms)}), {config.seeds} seeds x "
          f"{config.epochs} epochs on {config.dataset}, {torch.get_num_threads()} thread(s):")  # fmt: skip
    print(f"  every run alone:          {s:8.2f} s   (all: {', '.join(f'{v:.2f}' for v in times['alone'])})")  # fmt: skip
    print(f"  batched (the default):    {g:8.2f} s   (all: {', '.join(f'{v:.2f}' for v in times['batched'])})")  # fmt: skip
    print(f"  speed-up: {s / g:.2f}x; largest relative difference of a loss: {diff:.1e} (float32: "
          "the deep ReLU nets amplify round-off; in float64 the two agree to ~1e-15, "
          "tests/test_grid.py)")  # fmt: skip


def fashion_dir(args, tmp: Path) -> tuple[Path, str]:
    from natgrad.data import default_data_dir
    from natgrad.data.idx import write_idx

    folder = Path(args.fashion_dir) if args.fashion_dir else default_data_dir("fashion-mnist")
    try:
        from natgrad.data import load_dataset

        load_dataset("fashion-mnist", folder)
        return folder, f"Fashion-MNIST from {folder}"
    except Exception:  # noqa: BLE001 - any missing/corrupt file: fall back to shaped data
        pass
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60_000), ("t10k", 10_000)):
        write_idx(tmp / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))  # fmt: skip
        write_idx(tmp / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return tmp, f"random images with Fashion-MNIST's shapes (no data set in {folder})"


def bench_projection(args) -> None:
    from natgrad.training import default_config, train
    from natgrad.training.grid import train_grid

    e = args.projection_epochs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, what = fashion_dir(args, root)
        configs = [
            default_config("mnist-fc", dataset="fashion-mnist", data_dir=str(data), unit=u,
                           seed=s, epochs=e, checkpoint_every=25, probe_size=512)
            for s in range(5) for u in UNITS
        ]  # fmt: skip
        t_seq, seq = timed(lambda: train(configs[0], root / "seq", device="cpu", progress=False))
        dirs = [root / f"g{i}" for i in range(len(configs))]
        t_grid, grid = timed(lambda: train_grid(configs, dirs, device="cpu", progress=False))
    seq_epoch = statistics.median(m["seconds"] for m in seq.metrics[1:])
    grid_epoch = statistics.median(m["seconds"] for m in grid[0].metrics[1:]) * len(configs)
    seq_setup = t_seq - sum(m["seconds"] for m in seq.metrics[1:])
    grid_setup = t_grid - sum(m["seconds"] for m in grid[0].metrics[1:]) * len(configs)
    seq_total = len(configs) * (seq_setup + 300 * seq_epoch)
    grid_total = grid_setup + 300 * grid_epoch
    print(f"projection: paper Fig 2 protocol on Fashion-MNIST (mnist-fc, 300 epochs, 5 seeds x "
          f"{len(UNITS)} units = 20 runs, SGD lr 0.01, batch 64), {torch.get_num_threads()} "
          f"thread(s), CPU; data: {what}")  # fmt: skip
    print(f"  measured: grid of 20 runs {e} epoch(s) in {t_grid:.1f} s (epoch {grid_epoch:.1f} s, "
          f"setup {grid_setup:.1f} s); one sequential run {e} epoch(s) in {t_seq:.1f} s "
          f"(epoch {seq_epoch:.1f} s, setup {seq_setup:.1f} s)")  # fmt: skip
    print(f"  projected 300 epochs: grid {grid_total / 3600:.1f} h, sequential "
          f"{seq_total / 3600:.1f} h ({seq_total / grid_total:.2f}x)")  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--seeds", type=int, default=3, help="demo grid seeds (default 3, fewer than the demo's 8)"
    )
    p.add_argument("--epochs", type=int, default=20, help="demo grid epochs (default 20)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--step-repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (demo default 1)")
    p.add_argument("--projection-epochs", type=int, default=1)
    p.add_argument("--fashion-dir", default=None)
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["demo", "default", "step", "compare", "projection"],
    )
    p.add_argument(
        "--demo-seeds",
        type=int,
        default=None,
        help="seeds of the default-demo section (default: the demo's, 8)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, no projection")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.step_repeats, args.skip = 2, 3, [*args.skip, "projection", "default"]
    torch.set_num_threads(args.threads)
    print(f"natgrad bench/grid_train.py  torch {torch.__version__}, python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")  # fmt: skip
    if "step" not in args.skip:
        bench_step(args)
    if "demo" not in args.skip:
        bench_demo(args)
    if "default" not in args.skip:
        bench_demo_default(args)
    if "compare" not in args.skip:
        bench_compare(args)
    if "projection" not in args.skip:
        bench_projection(args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
