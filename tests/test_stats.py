"""bnbench.stats: every statistic against scipy on fixed data, then the methods themselves on
simulated sweeps with a known truth (coverage, false positives, power)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bnbench import stats

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


def test_holm_matches_hand_computed_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
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


def test_cells_that_failed_diverged_or_are_missing_are_kept():
    runs = make_runs({
        ("none", "relu"): [0.9, 0.8, ("diverged", 0.1)],  # NaN loss, finite chance-level accuracy
        ("none", "sigmoid"): ["diverged", "diverged", "failed"],
        ("bn", "relu"): [0.95, 0.96, None],  # seed 2 never ran
        ("bn", "sigmoid"): [0.93, "incomplete", 0.94],
    })
    expected = [{"norm": n, "activation": a} for n in ("none", "bn", "gn") for a in ("relu", "sigmoid")]
    cells = stats.cell_stats(runs, ["norm", "activation"], METRIC, expected_cells=expected)
    cells = cells.set_index(["norm", "activation"])
    assert len(cells) == 6
    row = cells.loc[("none", "sigmoid")]
    assert (row["status"], row["diverged"], row["failed"], row["n"]) == ("diverged", 2, 1, 0)
    assert math.isnan(row["mean"])
    row = cells.loc[("none", "relu")]
    assert (row["status"], row["n"], row["completed"], row["diverged"]) == ("partial", 2, 2, 1)
    assert row["mean"] == pytest.approx(0.85)  # the diverged seed is not in the statistics
    assert cells.loc[("bn", "relu"), "missing"] == 1 and cells.loc[("bn", "relu"), "status"] == "partial"
    assert cells.loc[("bn", "sigmoid"), "incomplete"] == 1
    for act in ("relu", "sigmoid"):
        assert cells.loc[("gn", act), "status"] == "missing" and cells.loc[("gn", act), "missing"] == 3


def test_compare_to_baseline_matches_scipy_and_pairs_by_seed():
    b = [*B, ("diverged", 0.1)]  # seed 4 of the bn cell diverged: only seeds 0-3 pair
    runs = make_runs({("none", "relu"): [*A, 0.5], ("bn", "relu"): b,
                      ("none", "tanh"): [0.8, 0.82, 0.85, 0.79], ("bn", "tanh"): [0.9, 0.91, 0.93, 0.9]})
    runs = runs.sample(frac=1, random_state=1)  # row order must not matter, only seeds
    out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, n_resamples=999)
    assert list(out["norm"]) == ["bn", "bn"] and set(out["activation"]) == {"relu", "tanh"}
    row = out.set_index("activation").loc["relu"]
    a, base = np.array(B), np.array(A)
    d = a - base
    assert row["n_pairs"] == 4 and row["baseline"] == "norm=none"
    assert row["mean_diff"] == pytest.approx(d.mean())
    assert (row["mean"], row["baseline_mean"]) == pytest.approx((a.mean(), base.mean()))
    assert row["p_ttest"] == pytest.approx(st.ttest_rel(a, base).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(st.wilcoxon(d).pvalue)
    assert row["d_z"] == pytest.approx(d.mean() / st.tstd(d))
    ci = st.bootstrap((d,), np.mean, n_resamples=999, random_state=0).confidence_interval
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert list(out["p_ttest_holm"]) == pytest.approx(list(stats.holm(out["p_ttest"])))
    assert list(out["p_wilcoxon_holm"]) == pytest.approx(list(stats.holm(out["p_wilcoxon"])))
    again = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"}, n_resamples=999)
    pd.testing.assert_frame_equal(out, again)  # the bootstrap is seeded


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
        ("none", "tanh"): [0.8, 0.8, 0.8], ("bn", "tanh"): [0.9, "diverged", "diverged"],  # one pair
        ("none", "elu"): ["failed"] * 3, ("bn", "elu"): [0.9, 0.9, 0.9],                # no baseline
        ("none", "selu"): [0.5, 0.6, 0.7], ("bn", "selu"): [0.6, 0.7, 0.8],             # constant diffs
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # degenerate data must be handled, not warned about
        out = stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "none"})
    out = out.set_index("activation")
    assert len(out) == 4  # no cell is dropped
    zero = out.loc["relu"]
    assert zero["mean_diff"] == 0 and math.isnan(zero["p_ttest"]) and math.isnan(zero["p_wilcoxon"])
    assert "zero" in zero["note"]
    one = out.loc["tanh"]
    assert one["n_pairs"] == 1 and math.isnan(one["mean_diff"]) and math.isnan(one["p_ttest_holm"])
    assert "need 2" in one["note"]
    assert out.loc["elu", "n_pairs"] == 0 and "baseline" in out.loc["elu", "note"]
    const = out.loc["selu"]
    assert math.isnan(const["p_ttest"]) and math.isnan(const["d_z"]) and const["mean_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not swept"):
        stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"optimizer": "sgd"})
    with pytest.raises(ValueError, match="no run has"):
        stats.compare_to_baseline(runs, ["norm", "activation"], METRIC, {"norm": "gn"})


def test_main_effects_interaction_and_ranking():
    runs = make_runs({("none", "relu"): [0.8, 0.9], ("none", "tanh"): [0.6, ("diverged", 0.1)],
                      ("bn", "relu"): [0.95, 0.97], ("bn", "tanh"): [0.9, 0.92]})
    effects = stats.main_effects(runs, ["norm", "activation"]).set_index(["factor", "level"])
    assert effects.loc[("norm", "none"), "mean"] == pytest.approx(np.mean([0.8, 0.9, 0.6]))
    assert effects.loc[("norm", "none"), "std"] == pytest.approx(st.tstd([0.8, 0.9, 0.6]))
    assert tuple(effects.loc[("norm", "none"), ["runs", "n"]]) == (4, 3)
    assert effects.loc[("activation", "tanh"), "mean"] == pytest.approx(np.mean([0.6, 0.9, 0.92]))
    table = stats.interaction_table(runs, "norm", "activation")
    assert table.loc["bn", "tanh"] == pytest.approx(0.91) and table.loc["none", "tanh"] == pytest.approx(0.6)
    ranked = stats.rank_cells(runs, ["norm", "activation"])
    assert list(ranked["rank"]) == [1, 2, 3, 4]
    assert tuple(ranked.iloc[0][["norm", "activation"]]) == ("bn", "relu")
    # a loss ranks the other way; a cell with no completed run comes last without a rank
    loss = make_runs({("none", "relu"): [0.5, 0.7], ("bn", "relu"): [0.1, 0.2], ("none", "tanh"): ["failed"]},
                     metric="final_train_loss")
    ranked = stats.rank_cells(loss, ["norm", "activation"], "final_train_loss")
    assert list(ranked["norm"]) == ["bn", "none", "none"] and math.isnan(ranked["rank"].iloc[-1])
    assert stats.higher_is_better("best_test_acc") and not stats.higher_is_better("epochs_to_acc_0.9")


def test_time_to_accuracy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"step": [10, 20, 30], "epoch": [1.0, 2.0, 3.0], "test_acc": [0.5, 0.91, 0.95],
                  "wall_s": [1.5, 3.0, 4.5]}).to_csv(run / "metrics.csv", index=False)
    assert stats.time_to_accuracy(run, 0.9) == 2.0
    assert stats.time_to_accuracy(run, 0.9, "seconds") == 3.0
    assert stats.time_to_accuracy(run, 0.9, "steps") == 20
    assert math.isnan(stats.time_to_accuracy(run, 0.99))
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
    assert stats.cell_stats(runs, ["norm"], column)["n"].tolist() == [1, 0, 0]


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


def test_identical_configs_are_significant_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    runs = simulated(n_cells=400, n_seeds=8, effect=0.0, rng=rng)
    out = stats.compare_to_baseline(runs, ["norm", "rep"], METRIC, {"norm": "base"}, n_resamples=199)
    assert len(out) == 400 and (out["n_pairs"] == 8).all()
    for column in ("p_ttest", "p_wilcoxon"):
        rate = (out[column] < 0.05).mean()
        assert 0.02 <= rate <= 0.08, (column, rate)
    # Holm keeps the chance of any false positive in a table near alpha: 80 tables of 5
    families = out["p_ttest"].to_numpy().reshape(80, 5)
    fwer = np.mean([(stats.holm(p) < 0.05).any() for p in families])
    assert fwer <= 0.1, fwer
    assert np.mean([(p < 0.05).any() for p in families]) > 0.15  # uncorrected: about 1 - 0.95**5


def test_a_known_effect_is_found_at_the_expected_power_and_its_interval_covers_it():
    rng = np.random.default_rng(2)
    effect, n = 0.02, 8
    runs = simulated(n_cells=200, n_seeds=n, effect=effect, rng=rng)
    out = stats.compare_to_baseline(runs, ["norm", "rep"], METRIC, {"norm": "base"}, n_resamples=999)
    assert out["mean_diff"].mean() == pytest.approx(effect, abs=0.002)
    # power of the paired t-test from the noncentral t: d_z = 0.02 / (0.01 * sqrt 2)
    nc = effect / (0.01 * np.sqrt(2)) * np.sqrt(n)
    crit = st.t.ppf(0.975, n - 1)
    power = st.nct.sf(crit, n - 1, nc) + st.nct.cdf(-crit, n - 1, nc)
    assert (out["p_ttest"] < 0.05).mean() == pytest.approx(power, abs=0.07)
    covered = ((out["ci_low"] <= effect) & (effect <= out["ci_high"])).mean()
    assert 0.82 <= covered <= 0.99, covered  # bootstrap intervals run narrow at n=8 (0.87 here)
    # pairing matters: an unpaired test drowns the effect in the shared per-seed variation
    unpaired = [st.ttest_ind(g[g.norm == "treat"][METRIC], g[g.norm == "base"][METRIC]).pvalue
                for _, g in runs.groupby("rep")]
    assert (np.array(unpaired) < 0.05).mean() < (out["p_ttest"] < 0.05).mean() - 0.2
