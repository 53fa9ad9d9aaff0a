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
