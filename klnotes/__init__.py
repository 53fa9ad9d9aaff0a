"""klnotes: KL regularization in RLHF, from value estimation to gradient optimization.

The package behind the klnotes book. Modules, one concern each:

- :mod:`klnotes.variants`     one name per KL variant (estimator, placement, level, correction)
- :mod:`klnotes.estimators`   k1, k2, k3 as functions of log-probabilities
- :mod:`klnotes.coefficients` gradient coefficients, closed forms and by autograd
- :mod:`klnotes.surrogates`   "k_n in reward" and "k_n as loss" losses, sequences, off-policy
- :mod:`klnotes.exact`        exact enumeration in float64
- :mod:`klnotes.weighted`     importance-weighted KL terms: differentiable or detached weight
- :mod:`klnotes.montecarlo`   bias, variance and confidence intervals by sampling
- :mod:`klnotes.policies`     GPT-2 policies (hub or a tiny local model)
- :mod:`klnotes.tasks`        verifiable rewards and prompts shipped with the package
- :mod:`klnotes.datafiles`    the package's data files (prompts, word lists)
- :mod:`klnotes.trainer`      one GRPO/PPO-style trainer whose KL term is a parameter
- :mod:`klnotes.experiments`  named experiments with scale presets and saved results
- :mod:`klnotes.frameworks`   what verl, OpenRLHF and TRL compute, audited
- :mod:`klnotes.cli`          the ``klnotes audit`` command on verl/OpenRLHF/TRL configurations
- :mod:`klnotes.plotting`     the house style and shared figures
"""
from klnotes._scale import SCALES, scale, seed_everything

#: The package version (also the book's edition number).
__version__ = "0.1.0"
__all__ = ["SCALES", "scale", "seed_everything", "__version__"]
