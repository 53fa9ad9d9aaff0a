"""Progress bars fall back to tqdm's text bar, without a warning, where ipywidgets is missing."""

import sys
import warnings

from tqdm.std import tqdm as text_tqdm

from klnotes._progress import progress_bar


def test_without_ipywidgets_the_text_bar_is_used_and_nothing_warns(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets now raises ImportError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = progress_bar(range(3), disable=True)
        assert type(bar) is text_tqdm
        assert list(bar) == [0, 1, 2]
