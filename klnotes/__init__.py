"""klnotes: KL regularization in RLHF, from value estimation to gradient optimization.

The package behind the klnotes book, in folders a reader can name:

- :mod:`klnotes.core`: the math core. ``variants`` (one name per KL variant), ``estimators``
  (:math:`k_1, k_2, k_3`), ``coefficients`` (the gradient coefficient of every implementation),
  ``surrogates`` ("k_n in reward" and "k_n as loss" as losses).
- :mod:`klnotes.analysis`: exact and sampled analysis. ``exact`` (float64 enumeration),
  ``montecarlo``, ``objective``, ``sequences``, ``lengths``, ``weighted``, ``offpolicy``,
  ``verdicts`` (the stated test behind every printed verdict).
- :mod:`klnotes.gpt2`: the GPT-2 experiments. ``policies``, ``tasks``, ``trainer``, ``checkpoint``,
  ``experiments`` (presets and stored results), ``gradcompare``, ``gpu_results``, ``devices``.
- :mod:`klnotes.frameworks`: what verl, OpenRLHF and TRL compute, audited, with their config readers;
  :mod:`klnotes.cli` is the ``klnotes audit`` command; :mod:`klnotes.trl_plugin` a principled KL term
  for TRL.
- :mod:`klnotes.plotting`: the house style, the figures and the results tables;
  :mod:`klnotes.exercises` checks students' answers; :mod:`klnotes.datafiles` the shipped data.
"""

from klnotes._scale import SCALES, scale, seed_everything

#: The package version (also the book's edition number).
__version__ = "0.1.0"
__all__ = ["SCALES", "scale", "seed_everything", "__version__"]


# The second edition's flat import paths (``klnotes.exact``, ``from klnotes import trainer``) keep working
# for readers' code: each old name resolves, lazily, to the module in its folder (one module object, so
# monkeypatching either path patches both). The package itself and the book use the folder paths.
def _install_flat_aliases() -> None:
    import importlib
    import importlib.abc
    import importlib.util
    import sys

    class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            if fullname in _FLAT_PATHS:
                return importlib.util.spec_from_loader(fullname, self)
            return None

        def create_module(self, spec):
            return importlib.import_module(_FLAT_PATHS[spec.name])

        def exec_module(self, module):
            pass

    if not any(isinstance(f, _Alias) or type(f).__name__ == "_Alias" for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())


_FLAT_PATHS = {
    f"klnotes.{name}": f"klnotes.{folder}.{name}"
    for folder, names in {
        "core": ("estimators", "coefficients", "surrogates"),
        "analysis": ("exact", "montecarlo", "objective", "sequences", "weighted"),
        "gpt2": (
            "policies",
            "tasks",
            "trainer",
            "experiments",
            "gradcompare",
            "gpu_results",
            "devices",
        ),
    }.items()
    for name in names
}
_install_flat_aliases()
