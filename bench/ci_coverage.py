r"""Benchmark: how often natgrad's 95 % CI of a mean over seeds covers the true mean.

Every study compares unit types by the mean over n seeds of paired differences, and its
report states a direction only where the 95 % CI excludes 0; so the CI must cover the true
mean about 95 % of the time at the n a study runs (3, 5, 8 or 10 seeds). For each n and each
population of differences this draws ``--repeats`` samples of n values (fixed generator),
forms each interval by natgrad's own functions and counts how often it holds the
population mean:

- ``t``: :func:`natgrad.analysis.stats.mean_ci`, Student's t interval (the default);
- ``BCa``: :func:`natgrad.analysis.stats.bootstrap_ci` (BCa, else percentile: 2000 resamples,
  what the records written before 2026-12-06 used), the baseline in the same run.

Populations: normal; Student t with 3 degrees of freedom (heavy tails); lognormal σ = 1
(skewed: a few seeds far out on one side). Then the ratio of two paired means (the gap
fraction of ``natgrad compare``): per seed (x, y) bivariate normal, means 0.25 and 1,
standard deviations 0.2 and 0.3, correlation 0.5; ``Fieller``
(:func:`natgrad.analysis.stats.ratio_ci`) against ``BCa`` of the ratio. Coverage is a
proportion of ``--repeats`` (binomial standard error about 0.007 at 1000). Run
``python bench/ci_coverage.py`` (``--quick``: 200 repeats).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from natgrad.analysis.stats import CONFIDENCE, bootstrap_ci, mean_ci, ratio_ci

POPULATIONS = {
    "normal": (lambda rng, n: rng.standard_normal(n), 0.0),
    "t(3)": (lambda rng, n: rng.standard_t(3, n), 0.0),
    "lognormal(1)": (lambda rng, n: rng.lognormal(0.0, 1.0, n), math.exp(0.5)),
}
SEEDS = (3, 5, 8, 10)
RATIO = (0.25, 1.0, 0.2, 0.3, 0.5)  # mean x, mean y, sd x, sd y, correlation
MEAN_CIS = {"t": mean_ci, "BCa": bootstrap_ci}
RATIO_CIS = {
    "Fieller": lambda xy: ratio_ci(*xy),
    "BCa": lambda xy: bootstrap_ci(xy, lambda a, b: a.mean() / b.mean()),
}


def draw_ratio(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` paired (x, y) of :data:`RATIO`, as the arrays x and y."""
    mx, my, sx, sy, r = RATIO
    cov = [[sx * sx, r * sx * sy], [r * sx * sy, sy * sy]]
    return tuple(rng.multivariate_normal([mx, my], cov, n).T)


def coverage(draw, truth: float, cis: dict, n: int, repeats: int, seed: int = 0) -> dict:
    """The fraction of ``repeats`` samples ``draw(rng, n)`` whose interval holds ``truth``,
    per method of ``cis`` (``{name: sample -> (lo, hi, method)}``; intervals that cannot be
    formed count as misses)."""
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(cis, 0)
    for _ in range(repeats):
        x = draw(rng, n)
        for name, ci in cis.items():
            lo, hi, _ = ci(x)
            hits[name] += bool(lo <= truth <= hi)
    return {k: v / repeats for k, v in hits.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 repeats")
    args = parser.parse_args(argv)
    repeats = 200 if args.quick else args.repeats
    se = math.sqrt(CONFIDENCE * (1 - CONFIDENCE) / repeats)
    print(f"coverage of the nominal {CONFIDENCE:.0%} CI of a mean, {repeats} samples per cell "
          f"(binomial s.e. at 95 %: {se:.3f})")  # fmt: skip
    print(f"{'population':<14}{'seeds':>6}{'t':>8}{'BCa':>8}{'BCa / t':>9}")
    for name, (draw, mean) in POPULATIONS.items():
        for n in SEEDS:
            c = coverage(draw, mean, MEAN_CIS, n, repeats)
            print(f"{name:<14}{n:>6}{c['t']:>8.3f}{c['BCa']:>8.3f}{c['BCa'] / c['t']:>9.2f}")
    print(f"\nratio of paired means (x̄/ȳ)\n{'seeds':>6}{'Fieller':>9}{'BCa':>8}{'BCa / F':>9}")
    for n in SEEDS:
        c = coverage(draw_ratio, RATIO[0] / RATIO[1], RATIO_CIS, n, repeats)
        print(f"{n:>6}{c['Fieller']:>9.3f}{c['BCa']:>8.3f}{c['BCa'] / c['Fieller']:>9.2f}")


if __name__ == "__main__":
    main()
