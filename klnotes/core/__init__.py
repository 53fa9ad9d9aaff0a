"""The math core: the estimators :math:`k_1, k_2, k_3`, the two implementation styles as losses,
and the gradient coefficient that every implementation reduces to (chapters 1-4).

Modules: ``variants`` (one name per KL variant), ``estimators``, ``coefficients``, ``surrogates``.
"""

__all__: list[str] = []  # a folder of modules: import each by name
