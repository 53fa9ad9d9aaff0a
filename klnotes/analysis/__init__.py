"""Exact and Monte Carlo analysis: float64 enumeration of categorical and autoregressive policies,
sequences and lengths, importance weighting and off-policy ratios, the regularized objective, and
the stated test behind every verdict (chapters 1-9).

Modules: ``exact``, ``montecarlo``, ``objective``, ``sequences``, ``lengths``, ``weighted``,
``offpolicy``, ``verdicts``.
"""

__all__: list[str] = []  # a folder of modules: import each by name
