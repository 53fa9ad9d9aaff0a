"""What verl, OpenRLHF and TRL compute for each of their KL options, audited (chapter 9).

Each option is *data*: the framework, the version or commit its code was read from, the flag
values, the per-token formula (replicated as a torch function, clamps included), what receives
the gradient, how the term is credited and aggregated, and whether the ratio
``pi_theta / pi_old`` touches it. Everything else is *computed* from that data:

- the gradient coefficient, with :func:`klnotes.core.coefficients.from_surrogate` (single token,
  on-policy), named by matching the closed forms of chapter 3 on ``|u| <= 2``, and where clamps
  change it (``u = log pi_theta - log pi_ref``);
- which objective the option follows on-policy, by exact float64 enumeration of a tiny
  autoregressive policy (vocabulary 3, length 3): its expected gradient is compared with the
  gradients of the sequence reverse KL, the per-token (partial) reverse KL, the sequence forward
  KL, the per-position forward KL, or nothing;
- whether it stays unbiased off-policy, by exact enumeration of the same length-3 policy sampled
  from a slightly older ``pi_old`` (ratios inside the clip range, so clipping plays no part): at
  sequence level, and per token given the prefix.

:func:`audit` returns one :class:`Audit`; :func:`table` renders every audited option as a
``pandas.DataFrame``. :data:`SOURCES` lists the files (repository, path, commit or version) each
formula was read from.

The package: :mod:`~klnotes.frameworks.sources` (where each formula was read),
:mod:`~klnotes.frameworks.replicas` (the formulas in torch), :mod:`~klnotes.frameworks.options` (options as
data: :mod:`~klnotes.frameworks.kloption` and one ``options_<framework>`` module each),
:mod:`~klnotes.frameworks.problems` (the exact test problems),
:mod:`~klnotes.frameworks.analysis` (what they compute), :mod:`~klnotes.frameworks.grouped`
(group-normalized advantages), :mod:`~klnotes.frameworks.config` (reading settings:
``config_keys``, ``config_settings``, ``config_readers``), :mod:`~klnotes.frameworks.files` (files and
launch scripts), :mod:`~klnotes.frameworks.versions` (defaults per release),
:mod:`~klnotes.frameworks.verdict` (verdict and recommendation) and :mod:`~klnotes.frameworks.render`
(HTML table). Every public name is re-exported here.
"""

from __future__ import annotations

from klnotes.analysis import exact  # noqa: F401  (kept as an attribute: frameworks.exact)
from klnotes.core.surrogates import reward_to_go  # noqa: F401  (chapter 9 uses frameworks.reward_to_go)
from klnotes.frameworks import (
    analysis,
    clamps,
    config,
    files,
    grouped,
    options,
    problems,
    render,
    replicas,
    schema,
    sources,
    verdict,
    versions,
)
from klnotes.frameworks.analysis import *  # noqa: F401,F403
from klnotes.frameworks.clamps import *  # noqa: F401,F403
from klnotes.frameworks.config import *  # noqa: F401,F403
from klnotes.frameworks.files import *  # noqa: F401,F403
from klnotes.frameworks.grouped import *  # noqa: F401,F403
from klnotes.frameworks.options import *  # noqa: F401,F403
from klnotes.frameworks.problems import *  # noqa: F401,F403
from klnotes.frameworks.render import *  # noqa: F401,F403
from klnotes.frameworks.replicas import *  # noqa: F401,F403
from klnotes.frameworks.schema import *  # noqa: F401,F403
from klnotes.frameworks.sources import *  # noqa: F401,F403
from klnotes.frameworks.verdict import *  # noqa: F401,F403
from klnotes.frameworks.versions import *  # noqa: F401,F403

__all__ = [
    *sources.__all__,
    *replicas.__all__,
    *options.__all__,
    *problems.__all__,
    *analysis.__all__,
    *grouped.__all__,
    *clamps.__all__,
    *files.__all__,
    *config.__all__,
    *versions.__all__,
    *schema.__all__,
    *verdict.__all__,
    *render.__all__,
]
