r"""Peak memory of one Conv2d layer's unit Fisher, each configuration in a fresh subprocess.

Usage::

    python bench/conv_memory.py [--n 256] [--cin 64] [--cout 64] [--hw 16] [--structure dense]
        [--natgrad-path DIR]   # import natgrad from DIR (e.g. an older checkout) instead

The child builds conv(C_in→C_out, 3×3, same) → ELU → conv(C_out→10, 1×1) → global average
pool (10 logits) in float32, draws N inputs, records the resident set size (RSS) after the
setup, runs ``unit_fisher(kind="empirical")`` (one backward column, so the time is the
block's GEMMs) and reports ``ru_maxrss`` (the peak RSS of the process) next to the result's
bytes: ``peak − setup`` is what the computation added, ``(peak − setup) / result`` its
overhead over the output.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _common import conv_head, peak_rss, rss, run_child


def child(cfg: dict) -> dict:
    """One configuration, measured in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    import natgrad
    from natgrad import unit_fisher

    net, x = conv_head(cfg["cin"], cfg["cout"], cfg["n"], cfg["hw"])
    y = torch.randint(0, 10, (cfg["n"],))
    kw = dict(kind="empirical")
    if cfg["structure"] != "dense":
        kw["structure"] = cfg["structure"]
    unit_fisher(net, "0", x[:2], y[:2], units=[0], **kw)  # warm up (kernels), one unit
    setup = rss()
    t = time.perf_counter()
    F = unit_fisher(net, "0", x, y, **kw)
    dt = time.perf_counter() - t
    peak = peak_rss()
    out = sum(v.numel() * v.element_size() for v in vars(F).values() if isinstance(v, torch.Tensor))
    return dict(natgrad=natgrad.__file__, setup=setup, peak=peak, result=out, seconds=dt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--cin", type=int, default=64)
    p.add_argument("--cout", type=int, default=64)
    p.add_argument("--hw", type=int, default=16)
    p.add_argument("--structure", default="dense")
    p.add_argument("--natgrad-path", action="append", default=None)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mib = 2**20
    for path in args.natgrad_path or [here]:
        cfg = dict(n=args.n, cin=args.cin, cout=args.cout, hw=args.hw, structure=args.structure)
        r = run_child([os.path.abspath(__file__), "--child", json.dumps(cfg)], path)
        if "error" in r:
            raise SystemExit(r["stderr"])
        added = r["peak"] - r["setup"]
        print(
            f"{r['natgrad']}: result {r['result'] / mib:.1f} MiB, setup RSS {r['setup'] / mib:.0f} MiB, "
            f"peak RSS {r['peak'] / mib:.0f} MiB, added {added / mib:.0f} MiB = "
            f"{added / r['result']:.2f}x the result, {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
