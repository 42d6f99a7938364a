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
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {path!r})
import torch
torch.set_num_threads(1)
import natgrad
from natgrad import unit_fisher

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d({cin}, {cout}, 3, padding=1), torch.nn.ELU(),
    torch.nn.Conv2d({cout}, 10, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
x = torch.randn({n}, {cin}, {hw}, {hw})
y = torch.randint(0, 10, ({n},))
kw = dict(kind="empirical")
if {structure!r} != "dense":
    kw["structure"] = {structure!r}
unit_fisher(net, "0", x[:2], y[:2], units=[0], **kw)  # warm up (kernels), one unit
setup = rss()
t = time.perf_counter()
F = unit_fisher(net, "0", x, y, **kw)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out = sum(v.numel() * v.element_size() for v in vars(F).values() if isinstance(v, torch.Tensor))
print(json.dumps(dict(natgrad=natgrad.__file__, setup=setup, peak=peak, result=out, seconds=dt)))
"""


def measure(path: str, **cfg) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path)
    code = CHILD.format(path=path, **cfg)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if run.returncode:
        raise SystemExit(run.stderr)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--cin", type=int, default=64)
    p.add_argument("--cout", type=int, default=64)
    p.add_argument("--hw", type=int, default=16)
    p.add_argument("--structure", default="dense")
    p.add_argument("--natgrad-path", action="append", default=None)
    args = p.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mib = 2**20
    for path in args.natgrad_path or [here]:
        r = measure(
            path, n=args.n, cin=args.cin, cout=args.cout, hw=args.hw, structure=args.structure
        )
        added = r["peak"] - r["setup"]
        print(
            f"{r['natgrad']}: result {r['result'] / mib:.1f} MiB, setup RSS {r['setup'] / mib:.0f} MiB, "
            f"peak RSS {r['peak'] / mib:.0f} MiB, added {added / mib:.0f} MiB = "
            f"{added / r['result']:.2f}x the result, {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
