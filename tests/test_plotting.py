"""The house style: colours by name, and line styles for labelled curves."""

import matplotlib

matplotlib.use("Agg")
import pytest  # noqa: E402

from klnotes import plotting  # noqa: E402


def test_color_of_an_unknown_name_lists_the_known_ones():
    assert plotting.color("k3 as loss") == plotting.PALETTE["k3 as loss"]
    with pytest.raises(KeyError, match="known: .*k1 in reward"):
        plotting.color("k7 as loss")


def test_line_styles_take_given_styles_then_the_house_palette_then_spare_colours():
    styles = plotting.line_styles(["mine", "k2 as loss", "other"], {"mine": ("#000000", "--")})
    assert styles[0] == ("#000000", "--")
    assert styles[1] == (plotting.PALETTE["k2 as loss"], "-")
    assert styles[2][1] == "-" and styles[2][0] not in plotting.PALETTE.values()


def test_figure_functions_draw_each_labelled_curve_with_its_style():
    import torch

    u = torch.linspace(-1, 1, 5)
    fig = plotting.plot_framework_coefficients(u, {"a": u, "b": -u}, styles={"b": ("#123456", ":")})
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["b"].get_color() == "#123456" and lines["b"].get_linestyle() == ":"
    assert set(lines) >= {"a", "b", "principled: c = u"}


def test_styled_tables_carry_the_themes_dataframe_class():
    import pandas as pd

    html = plotting.styled(pd.DataFrame({"a": [0.5]})).format("{:.1e}").to_html()
    assert 'class="dataframe"' in html and "5.0e-01" in html


def _sweep_frame(kls):
    import pandas as pd

    return pd.DataFrame(
        {
            "implementation": ["k2 as loss"] * len(kls),
            "kl": kls,
            "rel_error": [0.1 * (i + 1) for i in range(len(kls))],
        }
    )


def test_kl_axis_keeps_non_positive_estimates_visible():
    """A Monte Carlo KL estimate <= 0 must not vanish from chapter 7's log-axis sweep plots."""
    import numpy as np

    kls = [-2e-5, 3e-5, 1e-3]
    fig = plotting.plot_gradient_sweep(_sweep_frame(kls), "rel_error")
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog" and "linear within" in ax.get_xlabel()
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    drawn = np.concatenate([line.get_xdata() for line in ax.get_lines()])
    assert all(lo <= x <= hi for x in kls) and set(kls) <= set(drawn.tolist())
    xy = ax.transData.transform(
        np.c_[kls, [0.1, 0.2, 0.3]]
    )  # every point lands at a finite spot on the canvas
    assert np.isfinite(xy).all() and xy[0, 0] < xy[1, 0] < xy[2, 0]
    assert any(
        line.get_marker() == "o" and line.get_markerfacecolor() == "none" for line in ax.get_lines()
    )
    positive = plotting.plot_gradient_sweep(_sweep_frame([1e-4, 1e-3, 1e-2]), "rel_error").axes[0]
    assert positive.get_xscale() == "log" and "linear within" not in positive.get_xlabel()


def test_log_scale_choice_and_errors():
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    assert plotting.log_scale(ax, [1.0, 2.0], axis="y") == "log" and ax.get_yscale() == "log"
    _, ax = plt.subplots()
    assert plotting.log_scale(ax, [0.0, 0.0]) == "symlog"
    assert ax.xaxis.get_transform().linthresh == 1.0
    _, ax = plt.subplots()
    plotting.log_scale(ax, [-1e-3, 5e-4, 2.0])
    assert ax.xaxis.get_transform().linthresh == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="axis"):
        plotting.log_scale(ax, [1.0], axis="z")
    with pytest.raises(ValueError, match="finite"):
        plotting.log_scale(ax, [1.0, float("nan")])
    plt.close("all")
