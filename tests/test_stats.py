"""bnbench.analysis.stats: every statistic against scipy on fixed data, then the methods themselves on
simulated sweeps with a known truth (coverage, false positives, power)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bnbench.analysis import stats

METRIC = "final_test_acc"


def make_runs(cells: dict[tuple, list], factors=("norm", "activation"), metric=METRIC) -> pd.DataFrame:
    """A runs table as collect_runs returns it: cells maps factor values to one entry per seed,
    either a value (completed), a status string (diverged / failed / incomplete) or a
    (status, value) pair: a diverged run still has a finite final accuracy."""
    rows = []
    for key, entries in cells.items():
        for seed, entry in enumerate(entries):
            if entry is None:  # this seed never ran
                continue
            if isinstance(entry, tuple):
                status, value = entry
            else:
                status = entry if isinstance(entry, str) else "completed"
                value = np.nan if isinstance(entry, str) else entry
            run = ",".join(f"{f}={v}" for f, v in zip(factors, key)) + f",seed={seed}"
            rows.append({"run": run, "status": status, "seed": seed, **dict(zip(factors, key)), metric: value})
    return pd.DataFrame(rows)



# ---------------------------------------------------------------------------- Holm


def test_holm_matches_statsmodels_and_a_hand_computed_example():
    from statsmodels.stats.multitest import multipletests

    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    p = np.random.default_rng(0).uniform(0, 0.2, 12)
    assert stats.holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    # NaN is not part of the family (m=2) and stays NaN; values cap at 1
    out = stats.holm([0.5, np.nan, 0.4, ])
    assert out[0] == pytest.approx(0.8) and math.isnan(out[1]) and out[2] == pytest.approx(0.8)
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    assert len(stats.holm([])) == 0


# ---------------------------------------------------------------------------- fixed data vs scipy

A = [0.91, 0.93, 0.90, 0.95]
B = [0.97, 0.96, 0.99, 0.98]


def test_cell_stats_match_scipy():
    runs = make_runs({("none", "relu"): A, ("bn", "relu"): B})
    cells = stats.cell_stats(runs, ["norm", "activation"], METRIC).set_index("norm")
    for name, x in (("none", A), ("bn", B)):
        cell = cells.loc[name]
        low, high = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=st.sem(x))
        assert cell["n"] == len(x) and cell["status"] == "completed"
        assert cell["mean"] == pytest.approx(np.mean(x))
        assert cell["std"] == pytest.approx(st.tstd(x))
        assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((low, high))
        assert (cell["min"], cell["max"]) == (min(x), max(x))
    # another confidence level reaches scipy too
    cells90 = stats.cell_stats(runs, ["norm", "activation"], METRIC, confidence=0.9).set_index("norm")
    assert cells90.loc["none", "ci_low"] == pytest.approx(st.t.interval(0.9, 3, np.mean(A), st.sem(A))[0])


def test_diverged_runs_are_scored_failed_and_missing_runs_mark_their_cell():
    runs = make_runs({
        ("none", "relu"): [0.9, 0.8, ("diverged", 0.1)],  # NaN loss: its final model scored 10%
        ("none", "sigmoid"): ["diverged", "diverged", "failed"],  # no accuracy recorded: the worst score
        ("bn", "relu"): [0.95, 0.96, None],  # seed 2 never ran
        ("bn", "sigmoid"): [0.93, "incomplete", 0.94],
    })
    expected = [{"norm": n, "activation": a} for n in ("none", "bn", "gn") for a in ("relu", "sigmoid")]
    cells = stats.cell_stats(runs, ["norm", "activation"], METRIC, expected_cells=expected)
    cells = cells.set_index(["norm", "activation"])
    assert len(cells) == 6
    row = cells.loc[("none", "relu")]
    assert (row["status"], row["n"], row["completed"], row["diverged"], row["complete"]) == ("partial", 3, 2, 1, True)
    assert row["mean"] == pytest.approx(np.mean([0.9, 0.8, 0.1]))  # the diverged seed counts
    assert row["div_rate"] == pytest.approx(1 / 3)
    low, high = st.t.interval(0.95, 2, loc=np.mean([0.9, 0.8, 0.1]), scale=st.sem([0.9, 0.8, 0.1]))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    row = cells.loc[("none", "sigmoid")]
    assert (row["status"], row["diverged"], row["failed"], row["n"], row["complete"]) == ("diverged", 2, 1, 2, False)
    assert row["mean"] == -np.inf and math.isnan(row["ci_low"]) and row["div_rate"] == 1
    assert cells.loc[("bn", "relu"), "missing"] == 1 and not cells.loc[("bn", "relu"), "complete"]
    assert cells.loc[("bn", "sigmoid"), "incomplete"] == 1 and cells.loc[("bn", "sigmoid"), "n"] == 2
    for act in ("relu", "sigmoid"):
        assert cells.loc[("gn", act), "status"] == "missing" and cells.loc[("gn", act), "missing"] == 3
    ranked = stats.rank_cells(runs, ["norm", "activation"], expected_cells=expected)
    assert [tuple(r) for r in ranked[["norm", "activation"]].head(4).to_numpy()] == [
        ("bn", "relu"), ("bn", "sigmoid"), ("none", "relu"), ("none", "sigmoid")]
    assert ranked["rank"].head(4).tolist() == [1, 2, 3, 4] and ranked["rank"].tail(2).isna().all()


def test_a_cell_with_one_survivor_cannot_outrank_a_cell_that_never_diverged():
    # the old policy averaged the survivor only: 0.99 would have ranked first
    runs = make_runs({("none", "relu"): [0.99, ("diverged", 0.0), ("diverged", 0.0)],
                      ("bn", "relu"): [0.9, 0.91, 0.92]})
    ranked = stats.rank_cells(runs, ["norm", "activation"])
    assert ranked.iloc[0]["norm"] == "bn" and ranked.iloc[1]["mean"] == pytest.approx(0.33)


def test_a_diverged_loss_is_worse_than_every_finite_value():
    loss = "final_test_loss"
    runs = make_runs({("none", "relu"): [0.5, ("diverged", np.nan), ("diverged", np.nan)],
                      ("bn", "relu"): [0.3, 0.31, 0.29], ("gn", "relu"): [0.2, 0.9, ("diverged", np.inf)]},
                     metric=loss)
    ranked = stats.rank_cells(runs, ["norm", "activation"], loss).set_index("norm")
    assert ranked.loc["none", "mean"] == np.inf and ranked.loc["gn", "mean"] == np.inf
    # two infinite means: the median breaks the tie (gn: 0.9, none: +inf)
    assert ranked["rank"].to_dict() == {"bn": 1, "gn": 2, "none": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = stats.compare_to_baseline(runs, ["norm", "activation"], loss, {"norm": "bn"}).set_index("norm")
    row = out.loc["none"]
    assert row["n_pairs"] == 3 and row["diverged"] == 2 and row["baseline_diverged"] == 0
    assert math.isnan(row["p_ttest"]) and math.isnan(row["mean_diff"]) and "Wilcoxon" in row["note"]
    # the Wilcoxon test sees a diverged run as larger than every finite loss: the same p as on
    # any stand-in value above them all
    assert row["p_wilcoxon"] == pytest.approx(st.wilcoxon(np.array([0.5, 99, 99]) - [0.3, 0.31, 0.29]).pvalue)


def test_compare_to_baseline_matches_scipy_and_statsmodels_and_pairs_by_seed():
    from statsmodels.stats.power import TTestPower
    from statsmodels.stats.weightstats import ttost_paired

    b = [*B, ("diverged", 0.2)]  # seed 4 of the bn cell diverged: it pairs, with its final model's score
    runs = make_runs({("none", "relu"): [*A, 0.5], ("bn", "relu"): b,
                      ("none", "tanh"): [0.8, 0.82, 0.85, 0.79], ("bn", "tanh"): [0.9, 0.91, 0.93, 0.9]})
    runs = runs.sample(frac=1, random_state=1)  # row order must not matter, only seeds
    out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, margin=0.02)
    assert list(out["norm"]) == ["bn", "bn"] and set(out["activation"]) == {"relu", "tanh"}
    row = out.set_index("activation").loc["relu"]
    a, base = np.array([*B, 0.2]), np.array([*A, 0.5])
    d = a - base
    assert row["n_pairs"] == 5 and row["diverged"] == 1 and row["baseline"] == "norm=none"
    assert row["mean_diff"] == pytest.approx(d.mean())
    assert (row["mean"], row["baseline_mean"]) == pytest.approx((a.mean(), base.mean()))
    assert row["p_ttest"] == pytest.approx(st.ttest_rel(a, base).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(st.wilcoxon(d).pvalue)
    ci = st.ttest_rel(a, base).confidence_interval(0.95)  # the paired t-interval
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    d_z = d.mean() / st.tstd(d)
    assert row["d_z"] == pytest.approx(d_z)
    assert row["g_z"] == pytest.approx(d_z * (1 - 3 / (4 * 4 - 1)), rel=5e-3)  # Hedges' approximation, df = 4
    assert row["p_tost"] == pytest.approx(ttost_paired(a, base, -0.02, 0.02)[0])
    assert math.isnan(row["seeds_needed"])  # no effect named: no plan
    # one Holm family of the rows' primary tests (the t-test here); TOST is its own question
    assert list(out["test"]) == ["t", "t"]
    assert list(out["p_holm"]) == pytest.approx(list(stats.holm(out["p_ttest"])))
    assert list(out["p_tost_holm"]) == pytest.approx(list(stats.holm(out["p_tost"])))
    # the interval follows --confidence; a minimum effect sets the seeds needed
    out90 = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, confidence=0.9,
                                      effect=0.01).set_index("activation")
    ci90 = st.ttest_rel(a, base).confidence_interval(0.9)
    assert (out90.loc["relu", "ci_low"], out90.loc["relu", "ci_high"]) == pytest.approx((ci90.low, ci90.high))
    # planned at Holm's first step over the table's two tests (0.1 / 2), from the pilot SD and the
    # ends of its 90% chi-square interval (4 df)
    power = TTestPower()
    for column, sd in (("seeds_needed", st.tstd(d)), ("seeds_needed_low", st.tstd(d) * math.sqrt(4 / st.chi2.ppf(0.95, 4))),
                       ("seeds_needed_high", st.tstd(d) * math.sqrt(4 / st.chi2.ppf(0.05, 4)))):
        n = power.solve_power(effect_size=0.01 / sd, alpha=0.05, power=0.8)
        assert out90.loc["relu", column] == math.ceil(n), column
    assert out90.attrs["power_level"] == pytest.approx(0.05) and out90.attrs["family"] == 2
    # the bootstrap on request, seeded, and labelled as under-covering at this size
    boot = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, interval="bootstrap",
                                     n_resamples=999).set_index("activation")
    ci = st.bootstrap((d,), np.mean, n_resamples=999, random_state=0).confidence_interval
    assert (boot.loc["relu", "ci_low"], boot.loc["relu", "ci_high"]) == pytest.approx((ci.low, ci.high))
    assert "bootstrap" in boot.loc["relu", "note"]


def test_verdicts_better_worse_equivalent_inconclusive():
    rng = np.random.default_rng(5)
    base = 0.9 + rng.normal(0, 0.01, 8)
    cells = {("none", "relu"): list(base), ("bn", "relu"): list(base + 0.05 + rng.normal(0, 0.002, 8)),
             ("none", "tanh"): list(base), ("bn", "tanh"): list(base - 0.05 + rng.normal(0, 0.002, 8)),
             ("none", "elu"): list(base), ("bn", "elu"): list(base + rng.normal(0, 0.001, 8)),
             ("none", "selu"): list(base), ("bn", "selu"): list(base + np.array([0.04, -0.05] * 4))}  # mean 0.005, sd 0.05
    runs = make_runs(cells)
    out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, margin=0.01)
    verdicts = dict(zip(out["activation"], out["verdict"]))
    assert verdicts == {"relu": "better", "tanh": "worse", "elu": "equivalent", "selu": "inconclusive"}
    # without a margin, nothing is called equivalent; a loss is better when it is lower
    out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"})
    assert dict(zip(out["activation"], out["verdict"]))["elu"] == "inconclusive"
    loss = make_runs(cells, metric="final_test_loss")
    out = stats.compare_to_baseline(loss, ["norm", "activation"], "final_test_loss", {"norm": "none"})
    assert dict(zip(out["activation"], out["verdict"]))["relu"] == "worse"
    with pytest.raises(ValueError, match="margin"):
        stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, margin=-1)


def test_baseline_on_two_factors_compares_every_other_cell_with_that_one_cell():
    runs = make_runs({("none", "relu"): [0.5, 0.6, 0.7], ("none", "tanh"): [0.6, 0.8, 0.7],
                      ("bn", "relu"): [0.9, 0.8, 0.95], ("bn", "tanh"): [0.7, 0.75, 0.9]})
    out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none", "activation": "relu"})
    diffs = {(r.norm, r.activation): r.mean_diff for r in out.itertuples()}
    assert diffs == pytest.approx({("none", "tanh"): np.mean([0.6, 0.8, 0.7]) - 0.6,
                                   ("bn", "relu"): np.mean([0.9, 0.8, 0.95]) - 0.6,
                                   ("bn", "tanh"): np.mean([0.7, 0.75, 0.9]) - 0.6})
    assert (out["baseline"] == "norm=none, activation=relu").all()
    assert out["baseline_mean"].tolist() == pytest.approx([0.6] * 3)


def test_compare_to_baseline_degenerate_cases_give_nan_and_a_note():
    runs = make_runs({
        ("none", "relu"): [0.9, 0.91, 0.92], ("bn", "relu"): [0.9, 0.91, 0.92],         # all-zero diffs
        ("none", "tanh"): [0.8, 0.8, 0.8], ("bn", "tanh"): [0.9, "failed", "failed"],   # one pair
        ("none", "elu"): ["failed"] * 3, ("bn", "elu"): [0.9, 0.9, 0.9],                # no baseline
        ("none", "selu"): [0.5, 0.6, 0.7], ("bn", "selu"): [0.6, 0.7, 0.8],             # constant diffs
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # degenerate data must be handled, not warned about
        out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, margin=0.01)
    out = out.set_index("activation")
    assert len(out) == 4  # no cell is dropped
    zero = out.loc["relu"]
    assert zero["mean_diff"] == 0 and math.isnan(zero["p_ttest"]) and math.isnan(zero["p_wilcoxon"])
    assert "zero" in zero["note"] and zero["verdict"] == "inconclusive"
    one = out.loc["tanh"]
    assert one["n_pairs"] == 1 and math.isnan(one["mean_diff"]) and math.isnan(one["p_holm"])
    assert "need 2" in one["note"] and one["verdict"] == "inconclusive"
    assert out.loc["elu", "n_pairs"] == 0 and "baseline" in out.loc["elu", "note"]
    const = out.loc["selu"]
    assert math.isnan(const["p_ttest"]) and math.isnan(const["d_z"]) and const["mean_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not swept"):
        stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"optimizer": "sgd"})
    with pytest.raises(ValueError, match="no run has"):
        stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "gn"})


def test_marginals_are_unweighted_means_of_cell_means_with_divergence_rates():
    # norm x lr: without BN the large rate diverged on 2 of 3 seeds (final models at 0% and 10%)
    runs = make_runs({("none", "0.1"): [0.80, 0.82, 0.84], ("none", "1.0"): [0.85, ("diverged", 0.0), ("diverged", 0.1)],
                      ("bn", "0.1"): [0.86, 0.87, 0.88], ("bn", "1.0"): [0.88, 0.89, "failed"]},
                     factors=("norm", "optimizer.lr"))
    factors = ["norm", "optimizer.lr"]
    effects = stats.main_effects(runs, factors).set_index(["factor", "level"])
    cell = {("none", "0.1"): 0.82, ("none", "1.0"): (0.85 + 0.0 + 0.1) / 3, ("bn", "0.1"): 0.87,
            ("bn", "1.0"): (0.88 + 0.89) / 2}
    hand = {("norm", "none"): (cell[("none", "0.1")] + cell[("none", "1.0")]) / 2,
            ("norm", "bn"): (cell[("bn", "0.1")] + cell[("bn", "1.0")]) / 2,
            ("optimizer.lr", "0.1"): (cell[("none", "0.1")] + cell[("bn", "0.1")]) / 2,
            ("optimizer.lr", "1.0"): (cell[("none", "1.0")] + cell[("bn", "1.0")]) / 2}
    for key, value in hand.items():
        assert effects.loc[key, "mean"] == pytest.approx(value), key
    assert tuple(effects.loc[("norm", "none"), ["results", "diverged"]]) == (6, 2)
    assert effects.loc[("norm", "none"), "div_rate"] == pytest.approx(2 / 6)
    assert effects.loc[("optimizer.lr", "1.0"), "incomplete_cells"] == 1  # bn/1.0 has a failed run
    assert effects.loc[("norm", "bn"), "incomplete_cells"] == 1 and effects.loc[("norm", "none"), "incomplete_cells"] == 0
    table = stats.interaction_table(runs, "norm", "optimizer.lr").set_index(["norm", "optimizer.lr"])
    assert table.loc[("none", "1.0"), "mean"] == pytest.approx(cell[("none", "1.0")])
    assert table.loc[("none", "1.0"), "diverged"] == 2 and not table.loc[("bn", "1.0"), "complete"]


def test_sign_flips_are_found_in_the_interaction_table():
    runs = make_runs({("before", "relu"): [0.9, 0.91], ("after", "relu"): [0.92, 0.93],
                      ("before", "sigmoid"): [0.8, 0.81], ("after", "sigmoid"): [0.7, 0.71],
                      ("before", "tanh"): [0.85, 0.86], ("after", "tanh"): [0.87, 0.88]})
    table = stats.interaction_table(runs, "norm", "activation")
    (flip,) = stats.sign_flips(table, "norm", "activation")
    # levels in sorted order (no sweep order here): the effect is before - after
    assert (flip["low"], flip["high"]) == ("after", "before")
    assert flip["positive"] == ["sigmoid"] and flip["negative"] == ["relu", "tanh"]
    assert flip["diffs"]["sigmoid"] == pytest.approx(0.1) and flip["diffs"]["relu"] == pytest.approx(-0.02)
    no_flip = make_runs({("a", "x"): [1.0, 1.1], ("b", "x"): [2.0, 2.1], ("a", "y"): [1.0, 1.2], ("b", "y"): [3.0, 3.1]})
    assert stats.sign_flips(stats.interaction_table(no_flip, "norm", "activation"), "norm", "activation") == []


def test_anova_matches_statsmodels_with_seed_blocks_and_drops_orders_it_cannot_fit():
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(3)
    cells = {}
    for n, norm_effect in (("none", 0.0), ("bn", 0.05)):
        for a, act_effect in (("relu", 0.0), ("sigmoid", -0.1), ("tanh", -0.02)):
            inter = 0.08 if (n, a) == ("bn", "sigmoid") else 0.0
            cells[(n, a)] = list(0.8 + norm_effect + act_effect + inter + rng.normal(0, 0.01, 3)
                                 + np.array([0.0, 0.01, -0.01]))
    runs = make_runs(cells)
    table, notes = stats.anova(runs, ["norm", "activation"])
    frame = runs.rename(columns={"norm": "a", "activation": "b", METRIC: "y"}).assign(seed=lambda d: d.seed.astype(str))
    expected = anova_lm(smf.ols("y ~ C(a) * C(b) + C(seed)", data=frame).fit(), typ=2)
    got = table.set_index("term")
    for term, name in (("C(a)", "norm"), ("C(b)", "activation"), ("C(a):C(b)", "norm × activation"),
                       ("C(seed)", "seed (block)"), ("Residual", "Residual")):
        assert got.loc[name, "sum_sq"] == pytest.approx(expected.loc[term, "sum_sq"])
        assert got.loc[name, "df"] == expected.loc[term, "df"]
        if term != "Residual":
            assert got.loc[name, "F"] == pytest.approx(expected.loc[term, "F"])
            assert got.loc[name, "p"] == pytest.approx(expected.loc[term, "PR(>F)"])
            ss, resid = expected.loc[term, "sum_sq"], expected.loc["Residual", "sum_sq"]
            assert got.loc[name, "partial_eta2"] == pytest.approx(ss / (ss + resid))
    assert got.loc["norm × activation", "p"] < 0.01
    # one seed per cell: the full model leaves no residual, so the interaction is left out and said so
    single = runs[runs["seed"] == 0]
    table, notes = stats.anova(single, ["norm", "activation"])
    assert "norm × activation" not in set(table["term"]) and any("order 1" in n for n in notes)
    assert table.attrs["max_order"] == 1


def test_anova_is_fitted_on_the_complete_grid_of_runs_that_did_not_diverge_and_equals_statsmodels_there():
    """lr_tolerance's shape: without BN the high rates diverge. One diverged 0% among 90%
    accuracies would be most of the residual, and empty cells leave inestimable df; the model is
    fitted where every cell keeps two or more non-diverged results, and says what it left out."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(5)
    cells = {}
    for n, base in (("none", 0.80), ("bn", 0.86)):
        for lr, shift in (("0.1", 0.0), ("0.3", 0.01), ("1.0", 0.02), ("3.0", 0.0)):
            cells[(n, lr)] = list(base + shift + rng.normal(0, 0.01, 4))
    cells[("none", "1.0")][0] = ("diverged", 0.0)  # one diverged seed: left out, its cell keeps 3
    cells[("none", "3.0")] = [("diverged", 0.1), ("diverged", 0.1), ("diverged", 0.1), 0.5]  # one result
    runs = make_runs(cells, factors=("norm", "optimizer.lr"))
    table, notes = stats.anova(runs, ["norm", "optimizer.lr"])
    assert table.attrs["levels"] == {"norm": ["bn", "none"], "optimizer.lr": ["0.1", "0.3", "1.0"]}
    assert table.attrs["left_out"] == {"norm": [], "optimizer.lr": ["3.0"]}
    assert any("4 diverged run(s) are left out" in n for n in notes)
    assert any("left out: optimizer.lr 3.0" in n and "norm=none, optimizer.lr=3.0: 1" in n for n in notes)
    kept = runs[(runs["status"] == "completed") & (runs["optimizer.lr"] != "3.0")]
    frame = kept.rename(columns={"norm": "a", "optimizer.lr": "b", METRIC: "y"}).assign(seed=lambda d: d.seed.astype(str))
    expected = anova_lm(smf.ols("y ~ C(a) * C(b) + C(seed)", data=frame).fit(), typ=2)
    got = table.set_index("term")
    for term, name in (("C(a)", "norm"), ("C(b)", "optimizer.lr"), ("C(a):C(b)", "norm × optimizer.lr"),
                       ("C(seed)", "seed (block)"), ("Residual", "Residual")):
        assert got.loc[name, "df"] == expected.loc[term, "df"]  # every df estimable: 1, 2, 2
        assert got.loc[name, "sum_sq"] == pytest.approx(expected.loc[term, "sum_sq"])
        if term != "Residual":
            assert got.loc[name, "p"] == pytest.approx(expected.loc[term, "PR(>F)"])
    # a loss metric: the diverged runs have no finite value; the same grid, the same model
    loss_runs = runs.assign(final_test_loss=lambda d: np.where(d.status == "diverged", np.nan, 1 - d[METRIC]))
    loss, _ = stats.anova(loss_runs, ["norm", "optimizer.lr"], "final_test_loss")
    assert list(loss["df"]) == list(table["df"])
    assert loss.set_index("term").loc["norm", "sum_sq"] == pytest.approx(got.loc["norm", "sum_sq"])


def test_complete_subgrid_keeps_the_most_factors_then_the_most_cells():
    counts = np.array([[3, 3, 3, 0],
                       [3, 3, 3, 3]])
    assert stats.complete_subgrid(counts) == [[0, 1], [0, 1, 2]]  # 6 cells with both rows beat 4 with one
    counts = np.array([[3, 0, 3], [3, 3, 3], [0, 3, 3]])
    keep = stats.complete_subgrid(counts)
    assert np.all(counts[np.ix_(*keep)] >= 2) and counts[np.ix_(*keep)].size == 4
    assert stats.complete_subgrid(np.array([[1, 1], [1, 0]])) == [[], []]
    # beyond the exhaustive limit a greedy search: still a complete grid
    big = np.full((14, 14), 3)
    big[0, 5] = big[7, 2] = 0
    keep = stats.complete_subgrid(big)
    assert np.all(big[np.ix_(*keep)] >= 2) and big[np.ix_(*keep)].size == 13 * 13
    wide = np.full((2, 200), 3)  # 200 widths: 2^200 subsets are counted, never listed
    wide[1, 7] = 1
    assert stats.complete_subgrid(wide) == [[0, 1], [i for i in range(200) if i != 7]]


def test_a_sign_flip_is_named_only_where_its_contrast_test_supports_it():
    rng = np.random.default_rng(2)
    seeds = rng.normal(0, 0.02, 5)  # a shared seed effect: the paired contrast removes it
    cells = {("before", "relu"): list(0.90 + seeds + rng.normal(0, 0.002, 5)),
             ("after", "relu"): list(0.93 + seeds + rng.normal(0, 0.002, 5)),  # after − before: +3 points
             ("before", "sigmoid"): list(0.80 + seeds + rng.normal(0, 0.002, 5)),
             ("after", "sigmoid"): list(0.75 + seeds + rng.normal(0, 0.002, 5)),  # −5 points: a real flip
             ("before", "tanh"): list(0.85 + seeds + rng.normal(0, 0.01, 5)),
             ("after", "tanh"): list(0.849 + seeds + rng.normal(0, 0.01, 5))}  # ≈ 0: noise either way
    runs = make_runs(cells)
    table = stats.interaction_table(runs, "norm", "activation")
    flips = stats.test_flips(runs, ["norm", "activation"], stats.sign_flips(table, "norm", "activation"))
    (flip,) = flips
    assert flip["supported"]
    by_pair = {(c["positive"], c["negative"]): c for c in flip["contrasts"]}
    relu_sigmoid = by_pair.get(("sigmoid", "relu"), by_pair.get(("relu", "sigmoid")))
    per_seed = [(cells[("before", "sigmoid")][i] - cells[("after", "sigmoid")][i])
                - (cells[("before", "relu")][i] - cells[("after", "relu")][i]) for i in range(5)]
    sign = 1 if ("sigmoid", "relu") in by_pair else -1
    assert relu_sigmoid["p"] == pytest.approx(st.ttest_1samp(per_seed, 0).pvalue)
    assert relu_sigmoid["estimate"] == pytest.approx(sign * np.mean(per_seed))
    assert flip["p_holm"] < 0.05
    # the same means with seed noise as large as the flip: the change of sign is not named
    centred = lambda e: e - e.mean()  # noqa: E731  (the cell means stay as they were)
    noisy = make_runs({k: list(np.mean(v) + centred(rng.normal(0, 0.08, 3))) for k, v in cells.items()})
    flips = stats.test_flips(noisy, ["norm", "activation"],
                             stats.sign_flips(stats.interaction_table(noisy, "norm", "activation"), "norm", "activation"))
    assert flips and not any(f["supported"] for f in flips)


def test_time_to_accuracy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"step": [10, 20, 30], "epoch": [1.0, 2.0, 3.0], "test_acc": [0.5, 0.91, 0.95],
                  "wall_s": [1.5, 3.0, 4.5]}).to_csv(run / "metrics.csv", index=False)
    assert stats.time_to_accuracy(run, 0.9) == 2.0
    assert stats.time_to_accuracy(run, 0.9, "seconds") == 3.0
    assert stats.time_to_accuracy(run, 0.9, "steps") == 20
    assert stats.time_to_accuracy(run, 0.99) == math.inf  # never reached: slower than any time
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "metrics.csv").write_text("step,epoch,train_loss,train_acc,test_loss,test_acc,lr,wall_s\n")
    assert math.isnan(stats.time_to_accuracy(failed, 0.9))
    assert math.isnan(stats.time_to_accuracy(tmp_path / "gone", 0.9))
    runs = pd.DataFrame({"run": ["run", "failed", "gone"], "status": ["completed", "failed", "incomplete"],
                         "seed": [0, 0, 0], "norm": ["a", "b", "c"]})
    runs = stats.add_time_to_accuracy(runs, tmp_path, 0.9)
    column = stats.time_to_acc_column(0.9)
    assert column == "epochs_to_acc_0.9" and runs[column].iloc[0] == 2.0
    cells = stats.cell_stats(runs, ["norm"], column)
    assert cells["n"].tolist() == [1, 0, 0]  # failed and incomplete runs are not results
    # a completed run that never reached the target is slower than any time: +inf, ranked last
    runs.loc[len(runs)] = {"run": "slow", "status": "completed", "seed": 1, "norm": "a", column: np.inf}
    runs.loc[len(runs)] = {"run": "quick", "status": "diverged", "seed": 0, "norm": "d", column: 3.0}
    ranked = stats.rank_cells(runs, ["norm"], column).set_index("norm")
    assert ranked.loc["a", "mean"] == np.inf and ranked.loc["a", "median"] == np.inf
    assert ranked.loc["d", "rank"] == 1 and ranked.loc["a", "rank"] == 2  # a diverged run's time counts too
    # a completed run whose metrics.csv was unreadable (NaN) is not scored, and marks its cell
    runs.loc[len(runs)] = {"run": "torn", "status": "completed", "seed": 1, "norm": "d", column: np.nan}
    cells = stats.cell_stats(runs, ["norm"], column).set_index("norm")
    assert cells.loc["d", "n"] == 1 and not cells.loc["d", "complete"]




# ---------------------------------------------------------------------------- simulated sweeps


def simulated(n_cells: int, n_seeds: int, effect: float, rng, noise: float = 0.01) -> pd.DataFrame:
    """n_cells independent 'experiments', each a baseline cell and a treated cell sharing a
    per-seed effect (same data order and init), so pairing by seed matters."""
    cells = {}
    for i in range(n_cells):
        seed_effect = rng.normal(0.0, 0.03, n_seeds)
        cells[("base", f"e{i}")] = list(0.9 + seed_effect + rng.normal(0, noise, n_seeds))
        cells[("treat", f"e{i}")] = list(0.9 + effect + seed_effect + rng.normal(0, noise, n_seeds))
    return make_runs(cells, factors=("norm", "rep"))


@pytest.mark.slow
def test_confidence_intervals_cover_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    n, reps, mu = 5, 400, 0.9
    runs = make_runs({(f"e{i}",): list(rng.normal(mu, 0.02, n)) for i in range(reps)}, factors=("rep",))
    cells = stats.cell_stats(runs, ["rep"])
    covered = ((cells["ci_low"] <= mu) & (mu <= cells["ci_high"])).mean()
    assert 0.92 <= covered <= 0.98, covered
    # the band is tight enough to catch a wrong interval: a normal (z) interval undercovers at n=5
    half_z = st.norm.ppf(0.975) * cells["std"] / np.sqrt(n)
    assert ((cells["mean"] - half_z <= mu) & (mu <= cells["mean"] + half_z)).mean() < 0.92


@pytest.mark.slow
def test_identical_configs_are_significant_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    runs = simulated(n_cells=400, n_seeds=8, effect=0.0, rng=rng)
    out = stats.compare_to_baseline(runs, ["norm", "rep"], METRIC, {"norm": "base"})
    assert len(out) == 400 and (out["n_pairs"] == 8).all()
    for column in ("p_ttest", "p_wilcoxon"):
        rate = (out[column] < 0.05).mean()
        assert 0.02 <= rate <= 0.08, (column, rate)
    # Holm keeps the chance of any false positive in a table near alpha: 80 tables of 5
    families = out["p_ttest"].to_numpy().reshape(80, 5)
    fwer = np.mean([(stats.holm(p) < 0.05).any() for p in families])
    assert fwer <= 0.1, fwer
    assert np.mean([(p < 0.05).any() for p in families]) > 0.15  # uncorrected: about 1 - 0.95**5


@pytest.mark.slow
def test_paired_t_intervals_cover_at_the_nominal_rate_and_the_bootstrap_does_not():
    """Coverage of the interval of a paired difference, thousands of synthetic pairs per size."""
    rng = np.random.default_rng(7)
    effect, reps = 0.01, 2000
    for n in (3, 5, 10):
        cells = {}
        for i in range(reps):
            seed_effect = rng.normal(0, 0.02, n)
            cells[("base", f"e{i}")] = list(0.9 + seed_effect + rng.normal(0, 0.01, n))
            cells[("treat", f"e{i}")] = list(0.9 + effect + seed_effect + rng.normal(0, 0.01, n))
        runs = make_runs(cells, factors=("norm", "rep"))
        out = stats.compare_to_baseline(runs, ["norm", "rep"], METRIC, {"norm": "base"})
        covered = ((out["ci_low"] <= effect) & (effect <= out["ci_high"])).mean()
        # binomial sd of the estimate at 2000 reps is 0.005: allow 3 of them
        assert abs(covered - 0.95) <= 0.015, (n, covered)
        if n == 3:  # what the t-interval replaced: the BCa bootstrap covers about 0.74 here
            sample = runs[runs["rep"].isin([f"e{i}" for i in range(300)])]
            boot = stats.compare_to_baseline(sample, ["norm", "rep"], METRIC, {"norm": "base"},
                                             interval="bootstrap", n_resamples=199)
            boot_cover = ((boot["ci_low"] <= effect) & (effect <= boot["ci_high"])).mean()
            assert boot_cover < 0.85, boot_cover


@pytest.mark.slow
def test_a_known_effect_is_found_at_the_expected_power_and_its_interval_covers_it():
    rng = np.random.default_rng(2)
    effect, n = 0.02, 8
    runs = simulated(n_cells=200, n_seeds=n, effect=effect, rng=rng)
    out = stats.compare_to_baseline(runs, ["norm", "rep"], METRIC, {"norm": "base"})
    assert out["mean_diff"].mean() == pytest.approx(effect, abs=0.002)
    # power of the paired t-test from the noncentral t: d_z = 0.02 / (0.01 * sqrt 2)
    nc = effect / (0.01 * np.sqrt(2)) * np.sqrt(n)
    crit = st.t.ppf(0.975, n - 1)
    power = st.nct.sf(crit, n - 1, nc) + st.nct.cdf(-crit, n - 1, nc)
    assert (out["p_ttest"] < 0.05).mean() == pytest.approx(power, abs=0.07)
    covered = ((out["ci_low"] <= effect) & (effect <= out["ci_high"])).mean()
    assert 0.91 <= covered <= 0.99, covered
    # pairing matters: an unpaired test drowns the effect in the shared per-seed variation
    unpaired = [st.ttest_ind(g[g.norm == "treat"][METRIC], g[g.norm == "base"][METRIC]).pvalue
                for _, g in runs.groupby("rep")]
    assert (np.array(unpaired) < 0.05).mean() < (out["p_ttest"] < 0.05).mean() - 0.2


def test_seeds_needed_matches_statsmodels_and_survives_large_effects():
    from statsmodels.stats.power import TTestPower

    for d_z in (0.3, 0.84, 1.3, 2.0):
        expected = math.ceil(TTestPower().solve_power(effect_size=d_z, alpha=0.05, power=0.8))
        assert stats.seeds_needed(d_z, 1.0, 0.05) == expected
    # solve_power gives up here (power is NaN at some n); 3 seeds give 95% power at d_z = 4.47
    assert stats.seeds_needed(4.47, 1.0, 0.05) == 3
    assert stats.seeds_needed(50.0, 1.0, 0.05) == 2
    assert math.isnan(stats.seeds_needed(0.0, 1.0, 0.05)) and math.isnan(stats.seeds_needed(0.1, 0.0, 0.05))


def test_a_table_is_one_holm_family_whatever_test_decides_each_row():
    """A row with a diverged loss (no finite value: the Wilcoxon test decides) and rows with t
    tests are adjusted together, so the table's family-wise error is controlled."""
    runs = make_runs({("none", "relu"): [0.5, ("diverged", np.nan), ("diverged", np.nan)],
                      ("bn", "relu"): [0.3, 0.31, 0.29],
                      ("none", "tanh"): [0.5, 0.52, 0.55], ("bn", "tanh"): [0.3, 0.33, 0.31]},
                     metric="final_test_loss")
    out = stats.compare_to_baseline(runs, ["norm", "activation"], "final_test_loss", {"norm": "none"})
    out = out.set_index("activation")
    assert (out.loc["relu", "test"], out.loc["tanh", "test"]) == ("Wilcoxon", "t")
    primary = [out.loc["relu", "p_wilcoxon"], out.loc["tanh", "p_ttest"]]
    assert [out.loc["relu", "p_holm"], out.loc["tanh", "p_holm"]] == pytest.approx(list(stats.holm(primary)))


def test_every_pair_of_levels_is_compared_within_matching_cells():
    """bn_after − bn_before is the question a placement study asks: every pair of levels, each
    later level minus each earlier one, per activation, paired by seed, one Holm family."""
    rng = np.random.default_rng(3)
    cells = {}
    for act in ("relu", "tanh"):
        base = 0.8 + rng.normal(0, 0.01, 5)
        cells[("none", act)] = list(base)
        cells[("bn_before", act)] = list(base + 0.05 + rng.normal(0, 0.005, 5))
        cells[("bn_after", act)] = list(base + 0.06 + rng.normal(0, 0.005, 5))
    runs = make_runs(cells)
    runs["norm"] = pd.Categorical(runs["norm"], categories=["none", "bn_before", "bn_after"], ordered=True)
    out = stats.compare_pairs(runs, ["norm", "activation"], METRIC, "norm")
    assert len(out) == 6 and out.attrs["pairs"] == "all"
    pairs = set(zip(out["norm"].astype(str), out["baseline"], out["activation"].astype(str)))
    assert ("bn_after", "norm=bn_before", "relu") in pairs and ("bn_before", "norm=none", "tanh") in pairs
    row = out[(out["norm"] == "bn_after") & (out["baseline"] == "norm=bn_before") & (out["activation"] == "relu")].iloc[0]
    a, b = np.array(cells[("bn_after", "relu")]), np.array(cells[("bn_before", "relu")])
    assert row["mean_diff"] == pytest.approx((a - b).mean())
    assert row["p_ttest"] == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert list(out["p_holm"]) == pytest.approx(list(stats.holm(out["p_ttest"])))
    with pytest.raises(ValueError, match="not a swept factor"):
        stats.compare_pairs(runs, ["norm", "activation"], METRIC, "optimizer")


def test_arms_that_learned_nothing_get_no_winner():
    """An arm at chance (10 classes: 10%, within 5 points) or whose every seed diverged learned
    nothing: two such arms are "neither learned", never better or worse; one says which."""
    runs = make_runs({("none", "relu"): [0.101, 0.099, 0.102], ("bn", "relu"): [0.112, 0.113, 0.114],  # both at chance
                      ("none", "tanh"): [0.10, 0.10, 0.11], ("bn", "tanh"): [0.85, 0.86, 0.84],
                      ("none", "elu"): [0.80, 0.82, 0.81], ("bn", "elu"): [("diverged", 0.1)] * 3,
                      ("none", "gelu"): [0.80, 0.82, 0.81], ("bn", "gelu"): [0.85, 0.86, 0.87]})
    out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, chance=0.1)
    verdicts = dict(zip(out["activation"].astype(str), out["verdict"]))
    assert verdicts == {"relu": "neither learned", "tanh": "baseline did not learn", "elu": "did not learn",
                        "gelu": verdicts["gelu"]} and verdicts["gelu"] in ("better", "inconclusive")
    # without a known chance level only an arm whose every seed diverged learned nothing
    out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"})
    assert dict(zip(out["activation"].astype(str), out["verdict"]))["elu"] == "did not learn"
    assert "learned" not in dict(zip(out["activation"].astype(str), out["verdict"]))["relu"]


@pytest.mark.slow
def test_a_table_of_every_pair_keeps_its_family_wise_error_under_the_null():
    """200 tables of every pair of three identical levels (3 per context, 3 contexts, 5 seeds,
    a per-seed effect shared by the cells of a seed): the chance that a table calls any pair
    better or worse stays at about alpha, while its unadjusted tests would exceed it."""
    rng = np.random.default_rng(11)
    any_holm, any_raw = [], []
    for _ in range(200):
        cells = {}
        for context in ("relu", "tanh", "elu"):
            seed_effect = rng.normal(0.0, 0.03, 5)
            for level in ("none", "bn_before", "bn_after"):
                cells[(level, context)] = list(0.9 + seed_effect + rng.normal(0, 0.01, 5))
        out = stats.compare_pairs(make_runs(cells), ["norm", "activation"], METRIC, "norm")
        any_holm.append(bool((out["p_holm"] < 0.05).any()))
        any_raw.append(bool((out["p_ttest"] < 0.05).any()))
    assert np.mean(any_holm) <= 0.08, np.mean(any_holm)
    assert np.mean(any_raw) > 0.15, np.mean(any_raw)


@pytest.mark.slow
def test_the_planned_seeds_range_covers_the_seeds_the_effect_truly_needs():
    """A pilot of n seeds estimates the SD of the differences; the range from the SD's 95%
    interval holds the seeds a paired t-test truly needs (at the true SD) in about 95% of pilots,
    where the point figure alone is right far less often."""
    rng = np.random.default_rng(12)
    sigma, effect, alpha, reps = 0.01, 0.01, 0.05 / 3, 300
    truth = stats.seeds_needed(effect, sigma, alpha)
    for n in (3, 5):
        covered = exact = 0
        for _ in range(reps):
            sd = float(np.std(rng.normal(0, sigma, n), ddof=1))
            point, low, high = stats.planned_seeds(effect, sd, n, alpha)
            covered += low <= truth <= high
            exact += point == truth
        assert covered / reps >= 0.95 - 0.035, (n, covered / reps)
        assert exact / reps < 0.5, (n, exact / reps)


def test_g_z_is_undefined_with_two_pairs_not_zero():
    """Hedges' J(1) = 0: at 2 seeds the corrected size would print 0.00 beside a 15-point gain."""
    runs = make_runs({("none", "relu"): [0.70, 0.72], ("bn", "relu"): [0.85, 0.88]})
    row = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}).iloc[0]
    assert row["mean_diff"] == pytest.approx(0.155) and math.isnan(row["g_z"]) and np.isfinite(row["d_z"])
