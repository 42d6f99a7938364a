r"""Record a finished study: its summary tables, figures and provenance, in a folder to commit.

:func:`record_study` copies from a study's output folder (``natgrad demo --out DIR``) the
seed-level tables (``summary``, ``comparison``, ``seeds``, ``seed_epochs``, ``sweep_seeds``,
``curves``), ``context.json`` and ``summary.txt``, draws the headline, damping-sweep,
estimability and Fig 2 figures as PNG, and writes a ``README.md`` stating the command, the
commit, the device and the wall time, the headline table and the generated findings. The
per-unit tables and run directories stay out (they are large and can be rebuilt).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["record_name", "record_study", "record_tables", "run_provenance"]

KEPT = ("summary", "comparison", "seeds", "seed_epochs", "sweep_seeds", "curves", "endpoints",
        "probe_sizes", "neff_adjusted")  # fmt: skip


def _plain(fragment: str) -> str:
    """An HTML fragment of the report as markdown text (list items as bullets)."""
    import html
    import re

    text = re.sub(r"</p>", "\n\n", fragment)
    text = re.sub(r"<li>", "\n- ", text)
    text = re.sub(r"<[^>]+>", "", text)
    return html.unescape(re.sub(r"[ \t]+", " ", text)).strip()


def record_study(study_dir: str | os.PathLike, dest: str | os.PathLike, *, title: str) -> Path:
    """Copy the study in ``study_dir`` to ``dest`` (see the module docstring); returns the
    README's path."""
    import matplotlib

    matplotlib.use("Agg")

    from natgrad._atomic import read_checked, write_bytes, write_table, write_text
    from natgrad.analysis import plots
    from natgrad.analysis.report import answer, figures, findings, summary_text
    from natgrad.analysis.stats import mean_ci_name
    from natgrad.analysis.summary import headline_rho, read_tables
    from natgrad.training import git_commit

    study, out = Path(study_dir), Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    t = read_tables(study / "tables")
    for name in KEPT:  # checked against their checksums, written with them, atomically
        src = study / "tables" / f"{name}.csv"
        if src.is_file():
            write_table(out / f"{name}.csv", read_checked(src))
    write_bytes(out / "context.json", (study / "tables" / "context.json").read_bytes())
    paragraph, _ = answer(t)
    names = {"sweep": "damping_sweep"}  # the record's file names
    keys = ("answer", "headline", "n_eff", "probe_sizes", "sweep", "fig2")
    for key, (_, fig) in figures(t, keys).items():
        plots.save_figure(fig, out / names.get(key, key), formats=("png",), dpi=110)
    meta = json.loads((study / "demo.json").read_text()) if (study / "demo.json").is_file() else {}
    ctx = t["context"]
    lines = [f"# {title}", "", f"Command: `{ctx.get('command', '?')}`  ",
             f"Commit: `{git_commit()}` (code that made it: see context.json)  ",
             f"Device: {ctx.get('device', '?')}  ",
             f"Wall time: {meta.get('seconds', {}).get('total', float('nan')):.0f} s "
             f"({json.dumps({k: round(v) for k, v in meta.get('seconds', {}).items()})})", "",
             "## The answer (generated from the CIs; answer.png)", "", _plain(paragraph), "",
             f"## Summary (units at the last analysed epoch, curve claims over all epochs; mean over seeds [{mean_ci_name()} 95 % CI])", "",
             "```",
             summary_text(t["summary"]), "```", ""]  # fmt: skip
    claims = dict.fromkeys([headline_rho(t["units"]), "rho_plain", "rho_centred",  # headline first
                            "rho_quasidiagonal", "rho_blockdiag", "abs_median_activation",
                            "train_loss_auc", "log_train_loss_auc", "epochs_to_loss",
                            "median_activation_var", "test_error", "test_error_at_best_val"])  # fmt: skip
    found = findings(t["comparison"], claims)
    lines += [f"## Findings (generated from paired 95 % CIs over "
              f"{int(t['summary']['n_seeds'].max())} seeds; relative damping λ = "
              f"{ctx.get('relative damping λ', '?')}; ELU minus each unit type; secondary "
              f"unless declared primary above: each CI is unadjusted for the {len(found)} "
              "comparisons listed)", ""]  # fmt: skip
    lines += [f"- {s}" for s in found]
    lines += ["", "## Settings", ""] + [f"- {k}: `{v}`" for k, v in ctx.items()]
    lines += [
        "",
        "Figures: answer.png (the question's two halves), headline.png (ρ per unit type), "
        "damping_sweep.png, n_eff.png, probe_sizes.png (where swept), fig2.png; report.html is "
        "the full report.",
    ]
    if (study / "report.html").is_file():
        write_bytes(out / "report.html", (study / "report.html").read_bytes())
    readme = out / "README.md"
    write_text(readme, "\n".join(lines) + "\n")
    return readme


def record_tables(dest: str | os.PathLike, tables: dict, *, argv, script: str, **meta) -> Path:
    """Write a study script's result folder: each ``{name: DataFrame}`` of ``tables`` as
    ``<name>.csv`` (with its checksum), and ``run.json`` with the command (``script`` and
    ``argv``), the commit and ``meta`` (wall times, device, seeds, …). Returns ``dest``."""
    import sys

    from natgrad._atomic import write_json
    from natgrad.analysis.csvtables import write_csv
    from natgrad.training import git_commit

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        write_csv(frame, dest / f"{name}.csv")
    args = sys.argv[1:] if argv is None else argv
    write_json(dest / "run.json", dict(command=f"python {script} " + " ".join(args),
                                       commit=git_commit(), **meta))  # fmt: skip
    return dest


def record_name(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """How a record's own text names its folder: ``path`` relative to ``root`` (the
    repository) where it lies inside it, else the folder's name alone, never a machine's
    absolute path.

    Example:
        >>> record_name("/repo/paper_figures/results/x", "/repo"), record_name("/tmp/x", "/repo")
        ('paper_figures/results/x', 'x')
    """
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def read_meta(record: str | os.PathLike) -> dict:
    """A record's ``run.json`` (the command, commit and what :func:`record_tables` wrote)."""
    import json

    return json.loads((Path(record) / "run.json").read_text())


def rebuilt_by(record: str | os.PathLike, script: str | os.PathLike, meta: dict) -> str:
    """The README's sentence naming the command that rewrites it from the record's tables
    (``python <script> --readme <record>``, both named from the repository that holds
    ``script``, a study script's ``__file__``), then ``meta``'s note if it has one."""
    script = Path(script).resolve()
    root = script.parents[1]  # analysis/<script>.py
    return (f" This README is written from the tables by `python "
            f"{script.relative_to(root).as_posix()} --readme {record_name(record, root)}` "
            "(`tests/test_study.py` checks that it still is)."
            + (f" Note: {meta['note']}" if "note" in meta else ""))  # fmt: skip


def run_provenance(run_dirs) -> dict:
    """What a study's record says of the runs it reports: ``runs`` (how many),
    ``run_commit`` (the distinct commits that trained them, 7 characters, sorted) and
    ``train_seconds`` (the SGD steps' time summed, exactly rounded, over every epoch of every run;
    the evaluation and recording are left out)."""
    import math

    from natgrad.training.rundir import RunDir

    dirs = [RunDir(d) for d in run_dirs]
    commits = sorted({d.read_meta().get("git_commit", "?")[:7] for d in dirs})
    seconds = math.fsum(
        float(r.get("train_seconds") or 0.0) for d in dirs for r in d.read_metrics()
    )
    return dict(runs=len(dirs), run_commit=", ".join(commits), train_seconds=seconds)
