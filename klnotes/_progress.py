"""Progress bars: tqdm's notebook widget where ipywidgets is installed (Colab, JupyterLab), its text
bar otherwise (terminals, and notebook kernels without widgets, where ``tqdm.auto`` would warn)."""

from __future__ import annotations


def progress_bar(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` from ``tqdm.auto`` if ipywidgets can be imported, else ``tqdm.std``."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm(iterable, **kwargs)
