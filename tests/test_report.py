"""The report shows the tables' numbers, and only those; the library imports without matplotlib."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _demo_small import small_demo

from natgrad.analysis.report import SUMMARY_COLUMNS, fmt, fmt_ci, outward, render_report
from natgrad.analysis.summary import read_csv, read_tables, write_csv


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return small_demo(tmp_path_factory)


def _cells(html: str) -> dict[tuple[str, str], str]:
    """``{(unit, column): text}`` of the HTML summary table."""
    table = re.search(r'<table id="summary">(.*?)</table>', html, re.S).group(1)
    out = {}
    for unit, row in re.findall(r'<tr data-unit="([^"]+)">(.*?)</tr>', table, re.S):
        for col, text in re.findall(r'<td data-col="([^"]+)">([^<]*)</td>', row):
            out[(unit, col)] = text
    return out


def test_a_recorded_study_states_its_answer_findings_and_their_multiplicity(demo_dir, tmp_path):
    """``record_study``: the record's tables are the study's, byte for byte, with checksums;
    its README has the generated answer, and its findings heading says they are secondary
    and how many unadjusted comparisons it lists (one bullet each)."""
    from natgrad._atomic import read_checked
    from natgrad.analysis.record import KEPT, record_study

    out = tmp_path / "rec"
    assert record_study(demo_dir, out, title="small demo") == out / "README.md"
    readme = (out / "README.md").read_text()
    assert readme.startswith("# small demo") and "## The answer (generated from the CIs" in readme
    m = re.search(r"secondary unless declared primary above: each CI is unadjusted for the "
                  r"(\d+) comparisons listed\)\n\n((?:- .*\n)+)", readme)  # fmt: skip
    assert m and int(m.group(1)) == len(m.group(2).splitlines()) > 0
    for name in KEPT:
        if (demo_dir / "tables" / f"{name}.csv").is_file():
            assert (
                read_checked(out / f"{name}.csv")
                == (demo_dir / "tables" / f"{name}.csv").read_bytes()
            )


def test_summary_cells_equal_the_summary_table(demo_dir):
    summary = read_tables(demo_dir / "tables")["summary"]
    cells = _cells((demo_dir / "report.html").read_text())
    assert len(cells) == len(summary) * (len(SUMMARY_COLUMNS) + 2)
    for _, row in summary.iterrows():
        for col in SUMMARY_COLUMNS:
            assert cells[(row["unit_type"], col)] == fmt_ci(row.to_dict(), col)


def test_findings_table_holds_every_headline_comparison(demo_dir):
    """The headline comparisons are one compact table: a row per metric, a cell per compared
    unit type with reference − other = diff [CI] from comparison.csv."""
    import re

    html = (demo_dir / "report.html").read_text()
    comparison = read_tables(demo_dir / "tables")["comparison"]
    headline = comparison[comparison["metric"].isin(["rho_plain", "rho_centred"])]
    assert len(headline) == 4  # two metrics × (ELU vs ReLU, ELU vs ReLU+BN)
    table = html[html.index("<table id='findings'>") :].split("</table>")[0]
    for _, r in headline.iterrows():
        row = re.search(rf"<tr data-metric='{r['metric']}'>(.*?)</tr>", table).group(1)
        cell = re.search(rf"<td data-col='{r['other']}'>([^<]*)</td>", row).group(1)
        ends = f"{outward(r['lo'], False, digits=4, signed=False)}, {outward(r['hi'], True, digits=4, signed=False)}"
        assert cell.endswith(f"{fmt(r['diff'])} [{ends}]"), cell
        resolved = r["lo"] > 0 or r["hi"] < 0
        assert (cell[0] in "▲▼") if resolved else (cell[0] == "·"), cell
    # With two seeds nothing can be resolved at p < 0.5, and the page says how few seeds.
    paired = comparison[comparison["n"] > 0]
    assert (paired["p_min"] == 2.0 / 2 ** paired["n"]).all() and (paired["p_min"] >= 0.5).all()


def test_report_follows_an_edited_table_and_keeps_its_header(demo_dir, tmp_path):
    tables = tmp_path / "tables"
    shutil.copytree(demo_dir / "tables", tables)
    summary = read_csv(tables / "summary.csv")
    summary.loc[0, "rho_plain_mean"] = 0.4242
    write_csv(summary, tables / "summary.csv")  # with its checksum: a hand edit is refused
    html = render_report(tables, figures=False).read_text()
    assert _cells(html)[(summary["unit_type"][0], "rho_plain")].startswith("0.4242")
    assert "data:image/png" not in html
    assert "relative damping λ" in html and "command" in html  # the run header survives


def test_library_imports_without_matplotlib():
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import natgrad, natgrad.studies.demo, natgrad.analysis.report, natgrad.analysis.plots, natgrad.analysis.summary, "
        "natgrad.analysis.runs, natgrad.analysis.unitstats, natgrad.analysis.stats\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_terminal_summary_fits_100_columns():
    import pandas as pd

    from natgrad.analysis.report import SUMMARY_COLUMNS, summary_text

    row = {"n_seeds": 8}
    for c in SUMMARY_COLUMNS:
        row.update({f"{c}_mean": 0.123456, f"{c}_lo": -0.0123456, f"{c}_hi": 0.9876543})
    summary = pd.DataFrame([dict(row, unit_type=u) for u in ("elu", "relu", "relu-bn")])
    text = summary_text(summary)
    assert max(len(line) for line in text.splitlines()) <= 100
    for c in SUMMARY_COLUMNS:  # every column is still there
        from natgrad.analysis import metrics as mt

        assert mt.label(c) in text


def _synthetic_tables(n_eff: float, rho_lo: float, speed_hi: float) -> dict:
    """Tables as the MNIST demo writes them, for the first screen's paragraph."""
    import pandas as pd

    units = pd.DataFrame({"epoch": 1, "layer": ["fc2", "fc3"] * 2, "input_from": "units",
                          "dead": 0, "fan_in": 128, "n_eff": n_eff * 129,
                          "rho_plain": 0.5, "rho_plain_jk": 0.52})  # fmt: skip
    comp = pd.DataFrame([
        {"metric": "rho_plain_jk", "reference": "elu", "other": "relu", "n": 8, "diff": 0.1,
         "lo": rho_lo, "hi": 0.15, "p": 0.008, "better": "higher"},
        {"metric": "log_train_loss_auc", "reference": "elu", "other": "relu", "n": 8,
         "diff": -0.2, "lo": -0.3, "hi": speed_hi, "p": 0.008, "better": "lower"},
    ])  # fmt: skip
    eps = comp.assign(role="primary", family="primary", p_holm=0.016, ci_method="BCa")
    return {"units": units, "comparison": comp, "endpoints": eps}


def test_first_screen_paragraph_is_generated_from_the_cis():
    from natgrad.analysis.report import answer

    tables = _synthetic_tables(n_eff=10, rho_lo=0.05, speed_hi=-0.1)
    tables["context"] = {"relative damping λ": 1e-3}
    text, rho = answer(tables)
    assert rho == "rho_plain_jk"
    assert "relative damping λ = 0.001" in text  # the verdict names its damping
    assert "ELU is closer to the unit natural gradient; it learns faster." in text
    assert "Holm-adjusted p = 0.016" in text and "ELU (α=1) − ReLU = 0.1 [0.05, 0.15]" in text
    text, _ = answer(_synthetic_tables(n_eff=10, rho_lo=-0.05, speed_hi=0.1))
    assert "closeness to the unit natural gradient, no difference resolved" in text
    assert "learning speed, no difference resolved" in text
    text, rho = answer(_synthetic_tables(n_eff=1.5, rho_lo=0.05, speed_hi=-0.1))
    assert rho is None and "not estimable on this probe" in text and "is closer" not in text


def test_the_verdict_on_a_declared_primary_follows_the_declared_rule():
    """With 5 seeds Holm over the two primaries cannot pass 0.05 (the smallest Holm p is
    2·2/2⁵ = 0.125), yet the bold verdict stated both directions from the unadjusted CIs
    while the primaries below it showed Holm p = 0.125 (a helper's hunt). A declared primary
    is now read by the declared rule (Holm p < 0.05 and the CI), and the paragraph says what
    the CI alone would have said; an undeclared comparison still reads by its CI."""
    import pandas as pd

    from natgrad.analysis.report import answer

    tables = _synthetic_tables(n_eff=10, rho_lo=0.05, speed_hi=-0.1)
    tables["endpoints"]["p_holm"] = 0.125
    text, _ = answer(tables)
    assert "closeness to the unit natural gradient, no difference resolved" in text
    assert "learning speed, no difference resolved" in text
    assert "is closer" not in text and "learns faster" not in text
    assert "does not resolve it (Holm-adjusted p 0.125)" in text
    assert "common n_eff" not in text  # no caveat to a verdict not made
    twice = dict(tables, endpoints=pd.concat([tables["endpoints"]] * 2))  # two strata
    assert "learns faster" not in answer(twice)[0]
    twice["endpoints"]["p_holm"] = 0.01  # every stratum resolved: the direction stands
    assert "it learns faster" in answer(twice)[0]
    twice["endpoints"] = twice["endpoints"].reset_index(drop=True)
    twice["endpoints"].loc[3, ["diff", "lo", "hi"]] = [0.1, 0.02, 0.2]  # strata disagree
    text = answer(twice)[0]
    assert "learns faster" not in text and "strata in opposite directions" in text
    blocks = _synthetic_tables(n_eff=1.5, rho_lo=0.05, speed_hi=-0.1)  # not estimable
    blocks["endpoints"]["p_holm"] = 0.125
    text, _ = answer(blocks)
    assert "no difference resolved" in text and "does not resolve" in text
    del tables["endpoints"]
    assert "ELU is closer to the unit natural gradient; it learns faster." in answer(tables)[0]


@pytest.mark.parametrize(
    "lo, hi, said",
    [(0.01, 0.2, None), (-0.02, 0.1, "is not resolved"), (-0.2, -0.01, "points the other way")],
)
def test_the_answer_says_where_the_rho_lead_does_not_hold_at_a_common_n_eff(lo, hi, said):
    """A resolved ELU − ReLU ρ difference whose n_eff-adjusted comparison (``neff_adjusted``)
    is not resolved, or reverses, is followed by a sentence saying so, with its CI; one that
    holds adds nothing."""
    import pandas as pd

    from natgrad.analysis.report import answer

    tables = _synthetic_tables(n_eff=10, rho_lo=0.05, speed_hi=-0.1)
    tables["neff_adjusted"] = pd.DataFrame([
        {"metric": "rho_plain_jk", "reference": "elu", "other": "relu", "n": 8,
         "diff": (lo + hi) / 2, "lo": lo, "hi": hi, "slope": -0.04, "diff_unadjusted": 0.1},
        {"metric": "rho_plain_jk", "reference": "elu", "other": "srelu", "n": 8,
         "diff": -0.1, "lo": -0.2, "hi": -0.01, "slope": -0.04, "diff_unadjusted": 0.1},
    ])  # fmt: skip
    text, _ = answer(tables)
    assert "ELU is closer to the unit natural gradient" in text
    if said is None:
        assert "common n_eff" not in text
    else:
        assert f"that ρ difference {said} ({(lo + hi) / 2:.4g} [{lo:.4g}, {hi:.4g}])" in text
    # ELU resolved behind ReLU: an adjusted CI above 0 points the other way, one below agrees
    behind = _synthetic_tables(n_eff=10, rho_lo=-0.2, speed_hi=-0.1)
    behind["comparison"].loc[0, ["diff", "hi"]] = [-0.1, -0.05]
    behind["endpoints"].loc[0, ["diff", "hi"]] = [-0.1, -0.05]
    behind["neff_adjusted"] = tables["neff_adjusted"].assign(lo=-hi, hi=-lo, diff=-(lo + hi) / 2)
    text, _ = answer(behind)
    assert "ELU is farther from the unit natural gradient" in text
    assert ("common n_eff" in text) == (said is not None)
    if said:
        assert f"that ρ difference {said}" in text and "the difference may follow" in text
    # no adjusted interval (too few seeds with a fit): nothing said
    tables["neff_adjusted"][["lo", "hi"]] = float("nan")
    assert "common n_eff" not in answer(tables)[0]


def test_probe_size_table_gives_the_change_over_the_last_step_and_the_last_doubling():
    """Five nested sizes: the table names the change 8000 → 10000 and 5000 → 10000, each equal
    to the swept seeds' mean difference, for the plain and the jackknifed ρ."""
    import pandas as pd

    from natgrad.analysis.report import _sizes_html

    sizes = (1000, 2000, 5000, 8000, 10000)
    rows = [dict(unit_type="elu", seed=s, probe_size=m, rho_plain=0.5 - 100 / m + s * 0.01,
                 rho_plain_jk=0.6 - 10 / m, n_eff_over_d1=m / 1000)
            for s in (0, 1) for m in sizes]  # fmt: skip
    page = _sizes_html({"probe_sizes": pd.DataFrame(rows)})
    assert "|Δ| 8000 → 10000" in page and "|Δ| 5000 → 10000" in page
    cells = re.findall(r"<td>([^<]*)</td>", page.split("data-unit='elu'>")[1])
    assert cells[-2] == f"{fmt(100 / 8000 - 100 / 10000)} / {fmt(10 / 8000 - 10 / 10000)}"
    assert cells[-1] == f"{fmt(100 / 5000 - 100 / 10000)} / {fmt(10 / 5000 - 10 / 10000)}"


def test_fig2_names_the_held_out_curve_it_draws():
    """Fig 2's dotted curve is the validation loss where the runs have a validation split and
    the test loss (so named) where they have none; the report had drawn the test loss and
    called it validation."""
    import numpy as np

    from natgrad.analysis.report import figures
    from natgrad.analysis.summary import read_tables

    root = Path(__file__).resolve().parents[1] / "paper_figures/results"
    for record, name, column in (("mnist_demo", "validation", "val_loss"),
                                 ("digits_demo", "test", "test_loss")):  # fmt: skip
        t = read_tables(root / record)
        fig = figures(t, ("fig2",))["fig2"][1]
        assert fig.axes[1].get_title() == f"(b) train (solid), {name} (dotted)"
        sub = t["curves"][t["curves"]["unit_type"] == "elu"]
        elu = 10.0 ** np.log10(sub[column]).groupby(sub["epoch"]).mean()  # geometric (log axis)
        (line,) = [ln for ln in fig.axes[1].get_lines() if ln.get_label().endswith(f") {name}")
                   and ln.get_label().startswith("ELU") and "+BN" not in ln.get_label()]  # fmt: skip
        np.testing.assert_allclose(line.get_ydata(), elu.to_numpy(), rtol=1e-12)


def test_every_printed_ci_is_rounded_outward():
    """A printed interval holds the computed one: the report's cells, the comparison sentence
    and the interaction endpoint's text round each end away from the inside (nearest
    rounding printed 0.1235 for a lower end of 0.123456)."""
    from natgrad.analysis import stats

    row = {"x_mean": 0.5, "x_lo": 0.123456, "x_hi": 0.987641}
    assert fmt_ci(row, "x") == "0.5 [0.1234, 0.9877]"
    said = stats.sentence({"metric": "rho_plain", "reference": "elu", "other": "relu", "n": 8,
                           "diff": 0.05, "lo": 0.01236, "hi": 0.09812, "better": "higher"})  # fmt: skip
    assert "[0.0123, 0.0982]" in said
    assert stats.interval_text(-0.01236, 0.09812) == "[-0.0124, +0.0982]"


def test_loss_bands_on_a_log_axis_stay_above_zero():
    """On a log axis a band of mean − sd fell to the axis floor wherever sd > mean (vertical
    stripes in the Fashion Fig 2); log=True draws the geometric mean ×/÷ 10^sd of log10."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import pandas as pd

    from natgrad.analysis import plots

    t = pd.DataFrame({"unit_type": ["elu"] * 3, "seed": [0, 1, 2], "epoch": [1, 1, 1],
                      "train_loss": [1e-4, 1e-2, 1.0]})  # fmt: skip
    fig = plots.plot_curves(t, "train_loss", log=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert np.isclose(ax.lines[0].get_ydata()[0], 1e-2)  # geometric mean
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() > 0 and np.isclose(band.min(), 1e-4) and np.isclose(band.max(), 1.0)


def test_curves_average_every_seed_or_leave_the_point_out():
    """A seed that diverged (NaN) or, on a log axis, reached a loss of 0 drops out of a mean,
    which then is the survivors': such points are left out and the last full one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import pandas as pd

    from natgrad.analysis import plots

    t = pd.DataFrame({"unit_type": ["elu"] * 9, "seed": [0, 1, 2] * 3,
                      "epoch": [1, 1, 1, 2, 2, 2, 3, 3, 3],
                      "train_loss": [0.5, 0.1, 0.2, 0.0, 0.05, 0.04, 0.1, 0.02, np.nan]})  # fmt: skip

    def drawn(line):
        return list(line.get_xdata()[np.isfinite(line.get_ydata())])

    lin = plots.plot_curves(t, "train_loss").axes[0]  # epoch 2 whole (a 0 is a value), 3 not
    assert drawn(lin.lines[0]) == [1, 2] and list(lin.lines[1].get_xdata()) == [2]
    log = plots.plot_curves(t, "train_loss", log=True).axes[0]  # a 0 has no log: 2 out too
    assert drawn(log.lines[0]) == [1] and list(log.lines[1].get_xdata()) == [1]
    from natgrad.errors import InputError

    gap = t.assign(train_loss=[0.5, 0.1, 0.2, np.nan, 0.05, 0.04, 0.1, 0.02, 0.03])
    ax = plots.plot_curves(gap, "train_loss").axes[0]  # a gap breaks the line, not joined
    assert drawn(ax.lines[0]) == [1, 3] and np.isnan(ax.lines[0].get_ydata()[1])
    with pytest.raises(InputError, match="two rows for one seed"):
        plots.plot_curves(pd.concat([t, t]), "train_loss")


def test_an_interval_end_at_zero_prints_as_zero():
    """Float noise of an exact 0 printed as 5.551e-17 and −0.0 as −0."""
    from natgrad.analysis import stats

    assert stats.interval_text(5.551115123125783e-17, 0.3, signed=False) == "[0, 0.3]"
    assert stats.interval_text(-0.0, 0.5, signed=False) == "[0, 0.5]"
    assert stats.interval_text(-0.2, -1e-3) == "[-0.2, -0.001]"
