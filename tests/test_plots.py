"""The results' plots and printed tables: what they show, and a clear
error without matplotlib (an optional dependency)."""

import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_hybrid as kh  # noqa: E402
from keras_hybrid.diagnostics.results import ConstantUncertainty, ProfileLikelihood  # noqa: E402
from keras_hybrid.radius import RadiusPath  # noqa: E402


def _uncertainty():
    names = ["neg", "wide", "none", "T0"]
    return ConstantUncertainty(
        names=names,
        estimates={"neg": -3.0, "wide": 1.0, "none": 2.0, "T0": 293.15},
        stderr={"neg": 1.0, "wide": math.inf, "none": math.nan, "T0": 2e-4},
        intervals={"neg": (-5.0, -1.0), "wide": (-math.inf, math.inf), "none": (math.nan, math.nan),
                   "T0": (293.1496, 293.1504)},
        verdicts={"neg": "identified", "wide": "not identified", "none": "not identified",
                  "T0": "identified"},
        units={"neg": "", "wide": "1/s", "none": "", "T0": "K"},
        level=0.95, network="marginal", method="dense", noise_std=0.1, n=10,
        effective_parameters=4.0, selection_ranges={}, statistical_intervals={},
        notes={n: [] for n in names}, warnings=[])


def _profile():
    values = np.array([0.6, 0.7, 0.8])
    return ProfileLikelihood(
        name="k", unit="1/h", values=values, rss=np.array([2.0, 1.0, 2.0]), loss=np.full(3, np.nan),
        statistic=np.array([6.9, 0.0, 6.9]), interval=(0.65, 0.75), threshold=3.84, flat=False,
        estimate=0.7, rss_min=1.0, rss_estimate=1.0, estimate_statistic=0.0, warnings=[], n=10,
        level=0.95, seconds=1.0)


def _path():
    rows = [{"rho": rho, "seed": 0, "constants": {"A": 1.0 + rho, "k": 0.5}, "train_loss": 1.0,
             "val_loss": val, "net_share": 0.1, "val_losses": list(losses)}
            for rho, val, losses in ((0.0, 1.0, [1.0, 1.0, 1.0]), (0.2, 1.0, [1.0, 1.0, 1.0]),
                                     (0.5, 1.0, [1.0, 1.0, 1.0]))]
    return RadiusPath(rows, None, kh.SAM(), 0.25, 0.05, {"A": "mg/L", "k": "1/h"}, {})


def test_constant_intervals_are_drawn_relative_to_the_absolute_estimate():
    # A negative estimate was divided by its absolute value under the label
    # "value / estimate"; NaN, infinite and merely wide intervals were all
    # the same bar from -10 to 10; without `ax` it drew into the current
    # axes (another plot's).
    other = plt.figure().add_subplot()
    ax = _uncertainty().plot()
    assert ax is not other and not other.lines
    assert ax.get_xlabel() == "value / |estimate|"
    bars = [line for line in ax.lines if line.get_linewidth() == 3]
    np.testing.assert_allclose(bars[0].get_xdata(), [-5 / 3, -1 / 3])
    np.testing.assert_allclose(bars[1].get_xdata(), [-10.0, 10.0])
    arrows = [line for line in ax.lines if line.get_marker() in ("<", ">")]
    assert [a.get_ydata()[0] for a in arrows] == [1, 1]
    assert len(bars) == 3 and [t.get_text() for t in ax.texts] == ["no interval"]
    # The verdicts' labels lie inside the figure.
    ax.figure.canvas.draw()
    for label in ax.get_yticklabels():
        assert label.get_window_extent().x0 >= 0
    plt.close("all")


def test_profile_and_radius_path_plots_carry_units():
    ax = _profile().plot()
    assert ax.get_xlabel() == "k [1/h]"
    axes = _path().plot()
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["A [mg/L]", "k [1/h]"]
    with pytest.raises(ValueError, match="`axes` must be two matplotlib axes"):
        _path().plot(axes=plt.figure().add_subplot())
    plt.close("all")


def test_printed_tables_tell_narrow_interval_ends_apart_and_name_one_best_radius():
    text = str(_uncertainty())
    assert "[293.1496, 293.1504]" in text
    assert "interval [0.65, 0.75] 1/h" in str(_profile())
    # Three radii whose per-sample losses tie: one is the best, the others
    # get their p-values (all read "best").
    line = _path()._p_value_line()
    assert line.split("): ", 1)[1].count("best") == 1


def test_plots_without_matplotlib_say_how_to_install_it(monkeypatch):
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for result in (_uncertainty(), _profile(), _path()):
        with pytest.raises(ImportError, match=r"Plotting needs matplotlib.*pip install matplotlib"):
            result.plot()

    # `report` says so before computing anything.
    def not_called(*args, **kwargs):
        raise AssertionError("computed before finding that it cannot plot")

    monkeypatch.setattr("keras_hybrid.diagnostics.reporting.constant_uncertainty", not_called)
    with pytest.raises(ImportError, match="Plotting needs matplotlib"):
        kh.report(None, np.zeros((2, 1)), np.zeros((2, 1)), plot="out.png")
