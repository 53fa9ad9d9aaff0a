"""klnotes.plotting.table: one results table, three renderings (notebook HTML, book MyST, text)."""

import math
import re

import pandas as pd
import pytest

from klnotes import plotting
from klnotes.plotting.tables import MINUS, NBSP, md_escape, number, unbreakable


def test_numbers_cannot_wrap_minus_signs_and_spaces_are_unbreakable():
    assert number(-1.5e-16, ".1e") == f"{MINUS}1.5e{MINUS}16"
    assert unbreakable("1.000 ± 0.002") == f"1.000{NBSP}±{NBSP}0.002"
    assert number(float("nan")) == "\u2013" and number(None) == "\u2013"
    assert unbreakable("k2-as-loss") == "k2-as-loss"  # a hyphen in a word stays a hyphen


def test_markdown_is_a_numbered_list_table_with_caption_label_and_escaped_cells():
    frame = pd.DataFrame(
        {"name": ["k1 * as loss", "-u"], "rel_norm": [0.5, -2e-3], "c": ["-u", "e^{-u} - 1 + u"]}
    )
    t = plotting.table(
        frame,
        "Relative norms (dimensionless).",
        label="tab-2-norms",
        headers={"rel_norm": "relative norm", "c": "$c(u)$"},
        formats={"rel_norm": ".3f"},
        math=["c"],
    )
    md = t._repr_markdown_()
    assert md.startswith(
        ":::{list-table} Relative norms (dimensionless).\n"
    ) and md.rstrip().endswith(":::")
    assert ":name: tab-2-norms" in md and ":header-rows: 1" in md
    items = re.findall(r"^(?:\* -|  -) (.*)$", md, re.M)
    assert len(items) == 3 * 3
    assert items[:3] == ["name", "relative norm", "$c(u)$"]
    assert items[3] == r"k1 \* as loss" and items[6] == r"\-u"  # never a bullet or emphasis
    assert items[4] == r"0\.500" and items[7] == f"{MINUS}0\\.002"
    assert items[5] == "$-u$" and items[8] == "$e^{-u} - 1 + u$"


def test_html_has_caption_nowrap_cells_and_scrolls_in_its_own_box():
    t = plotting.table(
        pd.DataFrame({"a": [1.0], "text": ["long words here"]}), "A caption.", wrap=["text"]
    )
    h = t._repr_html_()
    assert "<caption>A caption.</caption>" in h and "overflow-x:auto" in h
    assert h.count('style="white-space:nowrap"') == 2  # header and cell of "a", not of "text"
    assert "long words here" in h
    raw = plotting.table(pd.DataFrame({"rel_norm": [1.0]}), "c", headers={})._repr_markdown_()
    assert "* - rel\\_norm" in raw  # a raw column name is shown as written, not as emphasis


def test_plain_text_repr_is_never_an_object_address():
    t = plotting.table(pd.DataFrame({"x": [math.pi]}), "Pi.", formats="{:.2f}")
    assert repr(t) == "Pi.\nx\n3.14" and " at 0x" not in repr(t)


def test_bad_inputs_are_named():
    frame = pd.DataFrame({"a": [1.0]})
    with pytest.raises(KeyError, match="'b' is not a column.*\\['a'\\]"):
        plotting.table(frame, "c", formats={"b": ".1f"})
    with pytest.raises(ValueError, match="caption"):
        plotting.table(frame, "  ")
    with pytest.raises(ValueError, match="tab-2-bias"):
        plotting.table(frame, "c", label="Table 1")


def test_md_escape_leaves_no_markdown_syntax():
    assert md_escape("a_b*c`d") == r"a\_b\*c\`d"


def test_a_cell_with_several_lines_gets_hard_line_breaks():
    t = plotting.table(
        pd.DataFrame({"flags": ["a=1\nb=2"]}), "Flags.", code=["flags"], wrap=["flags"]
    )
    assert "* - ``a=1``\\\n    ``b=2``" in t._repr_markdown_()
    assert "<code>a=1</code><br><code>b=2</code>" in t._repr_html_()


def test_legend_below_lies_under_the_axes_and_covers_no_data():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    ax.plot([0, 1], [1, 0], label="b")
    ax.set_xlabel("x")
    legend = plotting.legend_below(ax)
    fig.canvas.draw()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.y1 < axes_box.y0, (box, axes_box)  # entirely below the axes
    plt.close(fig)


def test_one_format_for_every_number_leaves_text_cells_as_they_are():
    frame = pd.DataFrame({"estimator": ["grpo", "rloo"], "scale": [0.5, 1.0], "G": [2, 3]})
    t = plotting.table(frame, "Scales (dimensionless).", formats="{:.3g}")
    assert [r[0] for r in t.rows] == ["grpo", "rloo"]
    assert t.rows[0][1] == "0.5" and t.rows[1][2] == "3"
