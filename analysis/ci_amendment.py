r"""What the t interval changes in every committed record (``docs/theory.md``, "Statistics").

Until 2026-12-06 every CI of a mean over seeds was BCa; at 3–10 seeds those cover the true
mean 74–89 % of the time (``bench/ci_coverage.py``), and natgrad now forms them with Student's
t (``natgrad.analysis.stats.mean_ci``). This rebuilds every committed record's paired
comparisons from its committed per-seed tables — the same paths its rebuild test takes —
once under the bootstrap (``mean_ci_method("bootstrap")``) and once under t, and counts, per
record and table, the CIs that exclude 0 under each and every comparison whose reading moved
(``stats.ci_changes``). Per-seed values, differences and p-values are the same under both.
Ratios of means (``natgrad compare``'s gap fractions) take Fieller's interval now
(``stats.ratio_ci``) and are compared with their bootstrap the same way. Tables of means
without a comparison (``network_fisher_random``) are left out.

    python analysis/ci_amendment.py [--results paper_figures/results] [--out FOLDER] [--annotate]

Writes ``ci_amendment.md`` and ``ci_amendment.csv`` (one row per moved reading) to ``--out``
(default: the results folder); ``--annotate`` also puts one marked note under the title of
every record still written with BCa intervals (run again, it replaces the note).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from natgrad.analysis import stats
from natgrad.analysis.endpoints import evaluate

ROOT = Path(__file__).resolve().parents[1]
PAIRED = ["metric", "other"]


def _csv(folder: Path, name: str):
    return pd.read_csv(folder / f"{name}.csv")


def _script(name: str):
    """A sibling study script (``analysis/<name>.py``) as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location(
        f"analysis_{name}", ROOT / "analysis" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo(folder: Path) -> dict:
    """The demo family: every compared metric of ``comparison.csv`` from ``seeds.csv``, and
    the declared endpoints where the record has them (``mnist_demo``). A record written before
    censored times were compared by order averaged them: it is rebuilt that way (without
    its ``epochs_reached``), so that both intervals are of the same averages."""
    seeds, written = _csv(folder, "seeds"), _csv(folder, "comparison")
    if not written.get("ci_method", pd.Series(dtype=str)).eq("none (sign test)").any():
        seeds = seeds.drop(columns="epochs_reached", errors="ignore")
    metrics = list(dict.fromkeys(written["metric"]))
    out = {"comparison": (pd.concat([stats.paired_comparison(seeds, m) for m in metrics],
                                    ignore_index=True), PAIRED)}  # fmt: skip
    if (folder / "endpoints.csv").is_file():
        from natgrad.studies.demo import for_dataset, primary_endpoints

        out["endpoints"] = (evaluate(seeds, primary_endpoints(for_dataset("mnist"))), PAIRED)
    return out


def fig2_mnist(folder: Path) -> dict:
    from natgrad.studies.fig2 import LOSS_LEVEL, mechanism_endpoints, mnist_endpoints

    curves, claims = _csv(folder, "curves"), _csv(folder, "claims")
    again, _ = stats.claims_per_seed(curves, threshold=LOSS_LEVEL)
    cols = [
        c for c in again.columns if c in claims.columns and c not in ("run", "unit_type", "seed")
    ]
    values = claims.assign(**{c: again.set_index("run").loc[claims["run"], c].to_numpy()
                              for c in cols})  # fmt: skip
    seeds = _csv(folder, "mechanism_seeds").sort_values("epoch", kind="stable")
    return {"endpoints": (evaluate(values, mnist_endpoints()), PAIRED),
            "mechanism_by_epoch": (evaluate(seeds, mechanism_endpoints(), by="epoch"),
                                   ["epoch", *PAIRED])}  # fmt: skip


def fig2_fashion(folder: Path) -> dict:
    from natgrad.studies.fig2 import claim_endpoints

    return {"paired": (evaluate(_csv(folder, "claims"), claim_endpoints()), PAIRED)}


def fig3(folder: Path) -> dict:
    m = _script("fig3_autoencoder")
    curves = _csv(folder, "curves")
    epochs = int(curves.groupby(["lr", "run"])["epoch"].max().min())
    keys = ["lr", "layer", *PAIRED]
    return {"comparisons": (m.comparisons(curves, epochs), ["lr", *PAIRED]),
            "unit_comparisons": (m.unit_comparisons(_csv(folder, "units")), keys),
            "unit_comparisons_estimable": (evaluate(_csv(folder, "units_estimable"),
                                                    list(m.ESTIMABLE_ENDPOINTS),
                                                    by=["lr", "layer"]), keys)}  # fmt: skip


def bn_cnn(folder: Path) -> dict:
    return {"primary": (_script("bn_cnn").primaries(_csv(folder, "runs")), ["endpoint"])}


def descriptive(name: str, measures: str, table: str, role: str = "secondary"):
    def recipe(folder: Path) -> dict:
        paired = _script(name).summarise(_csv(folder, measures))[1]
        paired = paired if "role" in paired else paired.assign(role=role)
        keys = [c for c in ("norm", "unit_type", "epoch", "metric", "reference", "other")
                if c in paired]  # fmt: skip
        return {table: (paired, keys)}

    return recipe


def compare(folder: Path) -> dict:
    """``natgrad compare``'s effects, rebuilt by ``rewrite_outputs`` in a scratch copy; the
    fair comparison's difference endpoints (2) and (3) where the record has them."""
    from natgrad.studies.compare import rewrite_outputs

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "out"
        shutil.copytree(folder, copy)
        rewrite_outputs(copy)
        ci = {"ci_low": "lo", "ci_high": "hi"}
        out = {"effects": (_csv(copy, "effects"), ["reference", *PAIRED])}
        if (copy / "shares.csv").stat().st_size > 1:  # empty without both gap arms
            out["shares"] = (_csv(copy, "shares").rename(columns=ci), ["arm", "epoch"])
    if (folder / "primary.csv").is_file():
        epoch = int(_csv(folder, "primary")["epoch"].iloc[0])  # the budget it was read at
        primary = _script("fair_compare").primaries(_csv(folder, "curves"), epoch)
        primary = primary.rename(columns=ci)
        primary = primary.assign(role=primary["endpoint"].str.startswith("secondary")
                                 .map({True: "secondary", False: "primary"}))  # fmt: skip
        out["primary"] = (primary, ["endpoint"])
    return out


RECORDS = {
    "mnist_demo": demo, "digits_demo": demo, "fashion_mnist_study": demo,
    "fig2_protocol_mnist": fig2_mnist, "fig2_protocol_fashion": fig2_fashion,
    "fig3_autoencoder_mnist": fig3, "fig3_autoencoder_mnist_lr1e-5_e50": fig3,
    "fig3_autoencoder_mnist_10seeds": fig3, "fig3_autoencoder_mnist_lr1e-4_e50": fig3,
    "bn_cnn_mnist": bn_cnn,
    "mechanism_dashboard_mnist": descriptive("mechanism_dashboard", "dashboard", "elu_vs_relu"),
    "direction_audit_digits": descriptive("direction_audit", "directions", "primary", "primary"),
    "compare_mnist/main": compare, "compare_mnist/standardised": compare,
    "compare_mnist/deviation_qd": compare, "compare_fashion_full": compare,
}  # fmt: skip


def audit(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per record and table: comparisons, CIs excluding 0 under BCa and under t, the CI
    method the record was written with; and every moved reading."""
    counts, moved = [], []
    for name, recipe in RECORDS.items():
        folder = results / name
        with stats.mean_ci_method("bootstrap"):
            before = recipe(folder)
        after = recipe(folder)
        for table, (new, keys) in after.items():
            c = stats.ci_changes(before[table][0], new, keys)
            c = (c.merge(new[[*keys, "role"]], on=keys, how="left") if "role" in new
                 else c.assign(role=""))  # fmt: skip
            shift = c[c["before"] != c["after"]]
            written = folder / f"{table}.csv"  # a record may add a table written since
            counts.append({"record": name, "table": table, "written_with":
                           stats.recorded_mean_ci(written if written.is_file() else folder),
                           "comparisons": len(c),
                           "resolved_bca": int((c["before"] != 0).sum()),
                           "resolved_t": int((c["after"] != 0).sum()), "moved": len(shift),
                           "primary_moved": int((shift["role"] == "primary").sum())})  # fmt: skip
            for r in shift.to_dict("records"):
                where = ", ".join(f"{k} {r[k]}" for k in keys)
                moved.append({"record": name, "table": table, "comparison": where,
                              "role": r["role"], "bca": int(r["before"]), "t": int(r["after"]),
                              "bca_lo": r["lo_before"], "bca_hi": r["hi_before"],
                              "t_lo": r["lo_after"], "t_hi": r["hi_after"]})  # fmt: skip
    columns = ["record", "table", "comparison", "role", "bca", "t", "bca_lo", "bca_hi", "t_lo",
               "t_hi"]  # fmt: skip
    return pd.DataFrame(counts), pd.DataFrame(moved, columns=columns)


def markdown(counts: pd.DataFrame, moved: pd.DataFrame, commit: str | None = None) -> str:
    word = {1: "above 0", -1: "below 0", 0: "holds 0"}
    lines = ["# What the t interval changes in the committed records", "",
             f"Command: `python analysis/ci_amendment.py --annotate`; commit `{commit}`. "
             "Every record's paired comparisons, "
             "rebuilt from its committed per-seed tables under BCa (how all of them were "
             "first written, but the Fig 3 seed extension and its lr 1e-4 extension, "
             "declared with t) and under "
             "Student's t (natgrad's CI of a mean over seeds since 2026-12-06: BCa covers "
             "74–89 % at 3–10 seeds, `bench/ci_coverage.py`; a ratio of means, Fieller's "
             "interval). Same differences and p-values; only the "
             "intervals differ. `written with`: the "
             "interval of the committed tables (records re-written since say t). Declared "
             "primary endpoints are the rows whose role is primary in the endpoint tables "
             "(`endpoints`, `primary`, Fig 3's `comparisons`); the demo records' `comparison` "
             "tables hold no declared endpoint.", "",
             "| record | table | written with | comparisons | CI excludes 0: BCa | t | moved "
             "| of them primary |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in counts.to_dict("records"):
        lines.append(f"| {r['record']} | {r['table']} | {r['written_with']} | {r['comparisons']} "
                     f"| {r['resolved_bca']} | {r['resolved_t']} | {r['moved']} "
                     f"| {r['primary_moved']} |")  # fmt: skip
    total = counts[["comparisons", "resolved_bca", "resolved_t", "moved", "primary_moved"]].sum()
    lines += ["", f"In all: {total['comparisons']} comparisons; {total['resolved_bca']} CIs "
              f"exclude 0 under BCa, {total['resolved_t']} under t; {total['moved']} readings "
              f"moved, {int((moved['t'] == 0).sum())} of them from resolved to not resolved "
              f"and {int((moved['bca'] == 0).sum())} the other way; "
              f"{total['primary_moved']} of them a declared primary endpoint.", "",
              "## Every moved reading", "",
              "| record | table | comparison | role | BCa CI | t CI |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in moved.to_dict("records"):
        lines.append(f"| {r['record']} | {r['table']} | {r['comparison']} | {r['role'] or '—'} "
                     f"| [{r['bca_lo']:.3g}, {r['bca_hi']:.3g}] {word[r['bca']]} "
                     f"| [{r['t_lo']:.3g}, {r['t_hi']:.3g}] {word[r['t']]} |")  # fmt: skip
    return "\n".join(lines) + "\n"


MARK = "<!-- ci-amendment -->"


def _note(path: Path, folder: Path, out: Path, rows: pd.DataFrame) -> None:
    """Put (or refresh) the marked note under the title of ``path``, counting ``rows``."""
    from natgrad._atomic import write_text

    n, moved, prim = (int(rows[c].sum()) for c in ("comparisons", "moved", "primary_moved"))
    link = Path(os.path.relpath(out / "ci_amendment.md", folder)).as_posix()
    note = (f"> **CIs** (note by `analysis/ci_amendment.py`): the 95 % CIs of means in this "
            "record are BCa, as natgrad formed them when it was written; at 3–10 seeds "
            "those cover the true mean 74–89 % of the time (`bench/ci_coverage.py`). "
            f"Rebuilt with Student's t intervals (Fieller's for a ratio), {moved} of its "
            f"{n} paired comparisons "
            f"read differently ({prim} of them declared primary): "
            f"[ci_amendment.md]({link}) lists them. {MARK}")  # fmt: skip
    lines = path.read_text(encoding="utf-8").split("\n")
    lines = [x for x in lines if MARK not in x]
    rest = lines[1:]
    while rest and rest[0] == "":  # the blank lines between the title and the text
        rest.pop(0)
    write_text(path, "\n".join([lines[0], "", note, "", *rest]))


def annotate(results: Path, counts: pd.DataFrame, out: Path | None = None) -> list[Path]:
    """Put (or refresh) one marked note under the title of each record still written with
    BCa intervals (its ``README.md``, else its ``answer.md``): what its CIs are and how many
    of its readings move under t, linking ``ci_amendment.md`` in ``out`` (default:
    ``results``). Records re-written with t get none. A record without a README of its own
    (``compare_mnist/main``) is reported in the README of a folder above it: that README gets
    one note too, over all the records under it, where all of them are BCa. Returns the
    files."""
    out = Path(results if out is None else out)
    written, above = [], {}
    for name, rows in counts.groupby("record", sort=False):
        folder = results / name
        if not (folder / "README.md").is_file():
            parent = next((p for p in folder.parents if p != results and
                           p.is_relative_to(results) and (p / "README.md").is_file()), None)  # fmt: skip
            if parent is not None:
                above.setdefault(parent, []).append(rows)
        if set(rows["written_with"]) != {"bootstrap"}:
            continue
        path = folder / "README.md" if (folder / "README.md").is_file() else folder / "answer.md"
        _note(path, folder, out, rows)
        written.append(path)
    for folder, parts in above.items():
        own = counts[counts["record"] == folder.relative_to(results).as_posix()]
        rows = pd.concat([own, *parts])  # a record's own README counts the records under it too
        if set(rows["written_with"]) != {"bootstrap"}:
            continue
        _note(folder / "README.md", folder, out, rows)
        if folder / "README.md" not in written:
            written.append(folder / "README.md")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "paper_figures" / "results")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--annotate",
        action="store_true",
        help="also note the change under the title of each BCa record",
    )
    args = parser.parse_args(argv)
    counts, moved = audit(args.results)
    out = args.out or args.results
    from natgrad._atomic import write_text
    from natgrad.training import git_commit

    write_text(out / "ci_amendment.md", markdown(counts, moved, git_commit()))
    write_text(out / "ci_amendment.csv", moved.to_csv(index=False))
    if args.annotate:
        for path in annotate(args.results, counts, out):
            print(f"noted in {path}")
    print(counts.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
