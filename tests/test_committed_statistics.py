"""The committed results rebuild from their committed per-run tables through today's one
statistics path (issue 21, item 4): the demo-family records (``mnist_demo``, ``digits_demo``,
``fashion_mnist_study``) from their ``curves.csv`` and ``seeds.csv``, and the MNIST Fig 2
protocol's declared endpoints from its ``curves.csv`` and ``claims.csv``. A change to
``claims_per_seed``, ``group_summary``, ``paired_comparison``, ``endpoints.evaluate`` or a
declaration that moves a committed number fails here. Each record rebuilds with the CIs it
was written with (``stats.recorded_mean_ci``: t, or the bootstrap of the records before
it). (``compare_mnist``, ``bn_cnn_mnist`` and ``fig3_autoencoder_mnist`` rebuild in
``test_compare.py`` and ``test_study.py``.)"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from natgrad.analysis import stats
from natgrad.analysis.csvtables import read_csv
from natgrad.analysis.endpoints import evaluate
from natgrad.analysis.summary import COMPARED, JK_COLUMNS, UNIT_METRICS, summary_metrics

RESULTS = Path(__file__).resolve().parents[1] / "paper_figures" / "results"
DEMOS = ("mnist_demo", "digits_demo", "fashion_mnist_study")


def _same(new: pd.DataFrame, old: pd.DataFrame, keys: list[str], what: str, rtol=1e-12,
          atol=1e-15) -> None:  # fmt: skip
    """``new`` holds every row of ``old`` (matched by ``keys``; an older record may lack newer
    rows) with its columns and numbers to ``rtol`` (an empty text cell reads back as NaN)."""
    new = new.merge(old[keys], on=keys, how="inner").replace("", float("nan"))
    new = new.sort_values(keys).reset_index(drop=True)
    old = old.sort_values(keys).reset_index(drop=True)
    assert list(new[keys].itertuples(index=False)) == list(old[keys].itertuples(index=False)), what
    pd.testing.assert_frame_equal(new[old.columns], old, check_exact=False, rtol=rtol,
                                  atol=atol, check_dtype=False, obj=what)  # fmt: skip


@pytest.mark.parametrize("name", DEMOS)
def test_a_demo_records_claims_summary_and_comparisons_rebuild(name):
    folder = RESULTS / name
    with stats.mean_ci_method(stats.recorded_mean_ci(folder)):  # the record's own CIs
        _rebuild_demo(name, folder)


def _rebuild_demo(name, folder):
    curves, seeds = read_csv(folder / "curves.csv"), read_csv(folder / "seeds.csv")
    claims, _ = stats.claims_per_seed(curves, last=3)
    _same(claims[[c for c in claims.columns if c in seeds.columns]],
          seeds[[c for c in claims.columns if c in seeds.columns]], ["unit_type", "seed"],
          f"{name}: the paper's claims per run")  # fmt: skip
    jk = [m for m in JK_COLUMNS if m in seeds.columns]
    # an older record lacks the newer metrics (log_train_loss_auc): the ones it has must agree
    summary = stats.group_summary(
        seeds, [m for m in summary_metrics(UNIT_METRICS + jk) if m in seeds]
    )
    _same(summary, read_csv(folder / "summary.csv"), ["unit_type"], f"{name}: summary.csv")
    # the newest record (mnist_demo) is today's declaration to the letter, sentences included;
    # the older two compared coupling_cost too and worded their sentences differently, so for
    # them every number of every metric they compare is rebuilt through today's function
    old = read_csv(folder / "comparison.csv")
    if name == "mnist_demo":
        metrics = jk + COMPARED + ["n_eff_over_d1"]
    else:
        metrics, old = list(dict.fromkeys(old["metric"])), old.drop(columns="text")
    comparison = pd.concat([stats.paired_comparison(seeds, m, reference="elu") for m in metrics],
                           ignore_index=True)  # fmt: skip
    assert len(comparison) == len(old), f"{name}: comparison.csv has other rows"
    # a censored time (a run that never reached the loss level) is compared by order today;
    # records written before averaged it: their rows are checked against that average
    by_order = comparison["ci_method"] == "none (sign test)"
    assert (comparison.loc[by_order, "metric"] == "epochs_to_loss").all()
    assert by_order.any() == (seeds["epochs_reached"] == 0).any()
    ordered_before = old.get("ci_method", pd.Series("", index=old.index)) == "none (sign test)"
    averaged = old[~ordered_before].merge(
        comparison.loc[by_order, ["metric", "other"]], on=["metric", "other"]
    )
    for r in averaged.to_dict("records"):
        wide = seeds.pivot_table(index="seed", columns="unit_type", values=r["metric"])
        s = stats.paired_summary((wide["elu"] - wide[r["other"]]).dropna().to_numpy())
        assert (s["diff"], s["lo"], s["hi"]) == pytest.approx((r["diff"], r["lo"], r["hi"]),
                                                               rel=1e-12), (name, r["other"])  # fmt: skip
        assert "earlier than" in comparison.set_index(["metric", "other"]).loc[
            (r["metric"], r["other"]), "text"]  # fmt: skip
    pairs = ["metric", "other"]
    was_averaged = averaged.set_index(pairs).index
    keep = ~old.set_index(pairs).index.isin(was_averaged)
    new = ~comparison.set_index(pairs).index.isin(was_averaged)
    _same(comparison[new], old[keep], pairs, f"{name}: comparison.csv")


def test_the_mnist_demos_declared_endpoints_rebuild():
    from natgrad.studies.demo import for_dataset, primary_endpoints

    folder = RESULTS / "mnist_demo"
    seeds = read_csv(folder / "seeds.csv")
    with stats.mean_ci_method(stats.recorded_mean_ci(folder)):
        table = evaluate(seeds, primary_endpoints(for_dataset("mnist")))
    _same(table, read_csv(folder / "endpoints.csv"), ["metric", "other"],
          "mnist_demo: endpoints.csv")  # fmt: skip


def test_the_mnist_fig2_protocols_declared_endpoints_rebuild():
    from natgrad.studies.fig2 import LOSS_LEVEL, mnist_endpoints

    folder = RESULTS / "fig2_protocol_mnist"
    curves, claims = read_csv(folder / "curves.csv"), read_csv(folder / "claims.csv")
    again, _ = stats.claims_per_seed(curves, threshold=LOSS_LEVEL)
    cols = [c for c in again.columns if c in claims.columns]
    # claims.csv and endpoints.csv were written to 6 significant digits: the claims agree to
    # that, the bootstrap CIs (recomputed from the claims, two columns still rounded) to 1e-4
    _same(again[cols], claims[cols], ["unit_type", "seed"], "fig2_protocol_mnist: claims.csv",
          rtol=1e-5)  # fmt: skip
    values = claims.assign(**{c: again.set_index("run").loc[claims["run"], c].to_numpy()
                              for c in cols if c not in ("run", "unit_type", "seed")})  # fmt: skip
    old = read_csv(folder / "endpoints.csv")
    with stats.mean_ci_method(stats.recorded_mean_ci(old)):  # this table's own CIs
        table = evaluate(values, mnist_endpoints())
    _same(table, old, ["metric", "other"],
          "fig2_protocol_mnist: endpoints.csv", rtol=1e-4)  # fmt: skip


def test_the_mnist_fig2_mechanism_by_epoch_rebuilds_from_its_declared_endpoints():
    """``mechanism_by_epoch.csv`` (ELU against each unit type at every analysed epoch) is the
    declared mechanism endpoints evaluated per epoch on the committed per-seed measures
    (both written to 6 significant digits, so a difference of two rounded inputs is good to
    about 1e-5 absolute: ρ ≤ 1, n_eff/(d+1) ~ 10; the texts quote 3 digits of those, so
    only the numbers are compared)."""
    from natgrad.studies.fig2 import mechanism_endpoints

    folder = RESULTS / "fig2_protocol_mnist"
    seeds = read_csv(folder / "mechanism_seeds.csv").sort_values("epoch", kind="stable")
    old = read_csv(folder / "mechanism_by_epoch.csv")
    with stats.mean_ci_method(stats.recorded_mean_ci(old)):  # this table's own CIs
        table = evaluate(seeds, mechanism_endpoints(), by="epoch")
    assert len(table) == len(old)
    _same(table, old.drop(columns=["better", "text"]), ["epoch", "metric", "other"],
          "fig2_protocol_mnist: mechanism_by_epoch.csv", rtol=1e-4, atol=1e-5)  # fmt: skip


def test_the_ci_amendment_of_the_committed_records_rebuilds(tmp_path, monkeypatch):
    """``ci_amendment.md``/``.csv`` (every record's paired comparisons under BCa and under t,
    and each reading that moved) rebuild from the committed tables to the same text; the note
    it puts under a BCa record's title is one marked paragraph however often it is run."""
    import os
    import re
    import shutil

    monkeypatch.syspath_prepend(str(RESULTS.parents[1] / "analysis"))
    m = __import__("ci_amendment")
    counts, moved = m.audit(RESULTS)
    old = (RESULTS / "ci_amendment.md").read_text(encoding="utf-8")
    commit = re.search(r"commit `([0-9a-f]+|None)`", old).group(1)
    assert m.markdown(counts, moved, commit) == old
    committed = pd.read_csv(RESULTS / "ci_amendment.csv").fillna("")
    pd.testing.assert_frame_equal(moved.fillna("").reset_index(drop=True), committed,
                                  check_dtype=False)  # fmt: skip
    assert set(counts["written_with"]) == {"t", "bootstrap"}
    # the note: the committed README with its note taken out gets it back, to the letter, and
    # keeps one however often it runs; a record re-written with t gets none
    old_readme = (RESULTS / "digits_demo" / "README.md").read_text(encoding="utf-8")
    lines = old_readme.split("\n")
    assert lines[2].endswith(m.MARK) and lines[3] == ""
    (tmp_path / "digits_demo").mkdir()
    (tmp_path / "digits_demo" / "README.md").write_text("\n".join(lines[:2] + lines[4:]))
    (tmp_path / "bn_cnn_mnist").mkdir()
    shutil.copy(RESULTS / "bn_cnn_mnist" / "README.md", tmp_path / "bn_cnn_mnist" / "README.md")
    subset = counts[counts["record"].isin(["digits_demo", "bn_cnn_mnist"])]
    for _ in range(2):
        assert m.annotate(tmp_path, subset, RESULTS) == [tmp_path / "digits_demo" / "README.md"]
        text = (tmp_path / "digits_demo" / "README.md").read_text(encoding="utf-8")
        assert text.replace(os.path.relpath(RESULTS, tmp_path / "digits_demo"), "..") == old_readme
    n = int(subset.loc[subset["record"] == "digits_demo", "comparisons"].sum())
    assert f"{n} paired comparisons read differently" in text
    assert (tmp_path / "bn_cnn_mnist" / "README.md").read_text() == (
        RESULTS / "bn_cnn_mnist" / "README.md"
    ).read_text()
    # the fair comparison's records (compare_mnist/main, /standardised, /deviation_qd) have no
    # README of their own: each answer.md gets its note, and the README above them, which
    # reports their numbers, one over all three (standardised's shares.csv formed no CI, every
    # row "none": it names no method, so that record reads as BCa, as written)
    names = ["compare_mnist/main", "compare_mnist/standardised", "compare_mnist/deviation_qd"]
    fair = counts[counts["record"].isin(names)]
    assert set(fair["written_with"]) == {"bootstrap"}
    for name in names:
        (tmp_path / name).mkdir(parents=True)
        shutil.copy(RESULTS / name / "answer.md", tmp_path / name / "answer.md")
    readme = (RESULTS / "compare_mnist" / "README.md").read_text(encoding="utf-8")
    (tmp_path / "compare_mnist" / "README.md").write_text(
        "\n".join(x for x in readme.split("\n") if m.MARK not in x)
    )
    for _ in range(2):
        assert m.annotate(tmp_path, fair, RESULTS) == [
            *(tmp_path / name / "answer.md" for name in names),
            tmp_path / "compare_mnist" / "README.md",
        ]
    for name in names:  # the committed notes, to the letter
        text = (tmp_path / name / "answer.md").read_text(encoding="utf-8")
        link = os.path.relpath(RESULTS, tmp_path / name)
        assert text.replace(link, "../..") == (RESULTS / name / "answer.md").read_text()
    text = (tmp_path / "compare_mnist" / "README.md").read_text(encoding="utf-8")
    n, moved = int(fair["comparisons"].sum()), int(fair["moved"].sum())
    assert (n, moved) == (155, 9)
    assert text.count(m.MARK) == 1 and f"{moved} of its {n} paired comparisons" in text
    assert text.replace(os.path.relpath(RESULTS, tmp_path / "compare_mnist"), "..") == readme


def test_a_record_whose_readme_also_reports_records_under_it_gets_one_note_over_all(
    tmp_path, monkeypatch
):
    """A record with a README of its own that also reports README-less records in folders
    under it gets one note, counting its own comparisons and theirs, and is listed once."""
    monkeypatch.syspath_prepend(str(RESULTS.parents[1] / "analysis"))
    m = __import__("ci_amendment")
    (tmp_path / "top" / "sub").mkdir(parents=True)
    (tmp_path / "top" / "README.md").write_text("# Top\n\ntext\n", encoding="utf-8")
    (tmp_path / "top" / "sub" / "answer.md").write_text("# Sub\n", encoding="utf-8")
    counts = pd.DataFrame({"record": ["top", "top/sub"], "written_with": ["bootstrap"] * 2,
                           "comparisons": [10, 5], "moved": [1, 2], "primary_moved": [0, 1]})  # fmt: skip
    written = m.annotate(tmp_path, counts)
    assert written == [tmp_path / "top" / "README.md", tmp_path / "top" / "sub" / "answer.md"]
    text = (tmp_path / "top" / "README.md").read_text(encoding="utf-8")
    assert text.count(m.MARK) == 1 and "3 of its 15 paired comparisons" in text
    assert "(1 of them declared primary)" in text and text.endswith("text\n")


def test_the_mnist_fig2_mechanism_at_a_common_n_eff_rebuilds():
    """``neff_adjusted.csv`` (the post-hoc check declared in ``natgrad.studies.fig2``) is
    ``neff_adjusted_by_epoch`` of the committed per-layer medians (written to 6 significant
    digits), at the estimable epochs, one Holm family; its t intervals hold its mean."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fig2_protocol", RESULTS.parents[1] / "analysis" / "fig2_protocol.py"
    )
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    folder = RESULTS / "fig2_protocol_mnist"
    table = m.neff_adjusted_by_epoch(read_csv(folder / "mechanism_layers.csv"))
    old = read_csv(folder / "neff_adjusted.csv")
    assert sorted(set(old["epoch"])) == list(m.ESTIMABLE_EPOCHS) and set(old["ci_method"]) == {"t"}
    assert (old["lo"] < old["diff"]).all() and (old["diff"] < old["hi"]).all()
    assert (old["p_holm"] >= old["p"]).all() and set(old["family"]) == {"neff-adjusted"}
    _same(table, old, ["epoch", "metric", "other"], "fig2_protocol_mnist: neff_adjusted.csv",
          rtol=1e-5)  # fmt: skip


def test_the_mnist_fig2_relation_rebuilds_with_its_cis_and_permutation_p(monkeypatch):
    """``relation.csv`` (per interval: the means over seeds with t CIs, Spearman's r with its
    bootstrap CI and permutation p) rebuilds from the committed per-seed ``relation_seeds.csv``
    (6 significant digits), and the README's table is the one its writer makes from it."""
    monkeypatch.syspath_prepend(str(RESULTS.parents[1] / "analysis"))
    import fig2_protocol

    folder = RESULTS / "fig2_protocol_mnist"
    again = fig2_protocol.relation_table(read_csv(folder / "relation_seeds.csv"))
    old = read_csv(folder / "relation.csv")
    _same(again, old, ["from", "to"], "fig2_protocol_mnist: relation.csv", rtol=1e-5)
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "\n".join(fig2_protocol.relation_lines(old)) in readme
    assert (old["spearman_lo"] < 0).all() and (old["spearman_hi"] > 0).all()  # as the text says
