"""Where the audit read each framework's code: files, commits, release ranges (chapter 9)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Source", "SOURCES", "VERSIONS", "HOLDS", "OPENRLHF_FLAG_ALIASES"]


@dataclass(frozen=True)
class Source:
    """A file a formula was read from: ``repo`` (GitHub owner/name or ``pypi:<name>``), ``path``,
    ``ref`` (full commit hash, or package version) and ``what`` it shows.

    The sources cited by :doc:`chapter 9 </book/09_in_practice>`'s audit table; no formula.
    """

    repo: str
    path: str
    ref: str
    what: str

    @property
    def url(self) -> str:
        if self.repo.startswith("pypi:"):
            name = self.repo.split(":", 1)[1]
            return f"https://pypi.org/project/{name}/{self.ref}/ ({self.path})"
        return f"https://github.com/{self.repo}/blob/{self.ref}/{self.path}"


#: Where each formula was read. verl and OpenRLHF need GPU stacks, so their code was read, not
#: run: these are the exact files, at release tags whose commits are on the projects' main
#: branches (``what`` names the release). TRL is installed and its code is run by the tests.
SOURCES: dict[str, tuple[Source, ...]] = {
    "verl": (
        Source(
            "verl-project/verl",
            "verl/trainer/ppo/core_algos.py",
            "483b8a009ba3a97563edee3a19887e4862b8094a",
            "v0.9.0: kl_penalty / kl_penalty_forward: k1, abs, k2, k3 (clamps), '+' straight-through",
        ),
        Source(
            "verl-project/verl",
            "verl/trainer/ppo/core_algos.py",
            "7e80ab0cf8ca7ba119414179f39d9f5794931b37",
            "PR #6058 (first released in v0.8.0): strip the '+' suffix; before it every '+' type raised "
            "NotImplementedError",
        ),
        Source(
            "verl-project/verl",
            "verl/workers/utils/losses.py",
            "483b8a009ba3a97563edee3a19887e4862b8094a",
            "v0.9.0: use_kl_loss: kl_penalty(log_prob, ref_log_prob) aggregated by loss_agg_mode, no ratio "
            "(verl/workers/actor/dp_actor.py, where it lived before, is gone)",
        ),
        Source(
            "verl-project/verl",
            "verl/trainer/ppo/ray_trainer.py",
            "483b8a009ba3a97563edee3a19887e4862b8094a",
            "v0.9.0: apply_kl_penalty: token_level_rewards = scores - beta * kl_penalty(old_log_probs, ref_log_prob)",
        ),
        Source(
            "verl-project/verl",
            "verl/trainer/config/actor/actor.yaml",
            "483b8a009ba3a97563edee3a19887e4862b8094a",
            "v0.9.0 defaults: use_kl_loss false, kl_loss_coef 0.001, kl_loss_type low_var_kl, loss_agg_mode token-mean",
        ),
        Source(
            "verl-project/verl",
            "verl/trainer/config/ppo_trainer.yaml",
            "483b8a009ba3a97563edee3a19887e4862b8094a",
            "v0.9.0 defaults: use_kl_in_reward False, kl_penalty kl, kl_ctrl fixed 0.001, gamma 1, lam 1, "
            "adv_estimator gae",
        ),
    ),
    "openrlhf": (
        Source(
            "OpenRLHF/OpenRLHF",
            "openrlhf/models/utils.py",
            "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
            "v0.11.0: compute_approx_kl: k1, k2, k3 in float32, all clamped to [-10, 10]; compute_reward: "
            "-kl_coef * kl per token",
        ),
        Source(
            "OpenRLHF/OpenRLHF",
            "openrlhf/trainer/ppo_utils/experience_maker.py",
            "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
            "v0.11.0: KL in reward from rollout-time log-probs unless --algo.kl.use_loss; cumulative returns",
        ),
        Source(
            "OpenRLHF/OpenRLHF",
            "openrlhf/trainer/ray/ppo_actor.py",
            "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
            "v0.11.0: --algo.kl.use_loss: aggregate_loss(compute_approx_kl(log_probs, base_log_probs)) * kl_ctl, "
            "no ratio",
        ),
        Source(
            "OpenRLHF/OpenRLHF",
            "openrlhf/models/loss.py",
            "c5bebd1438903c5a2d492af994275434843e3f3d",
            "PR #1249 (v0.10.4): aggregate_loss divides by the token count of the whole optimizer step; "
            "v0.10.3 (df78645e) moved the KL loss to aggregate_loss, before it a micro-batch masked mean",
        ),
        Source(
            "OpenRLHF/OpenRLHF",
            "openrlhf/cli/train_ppo_ray.py",
            "3c3be6234e0cb353e76bb8019947db9dfe99fca7",
            "v0.11.0 defaults: --algo.kl.init_coef 0.01, --algo.kl.estimator k1, --algo.kl.use_loss off, "
            "--algo.advantage.estimator gae, --algo.advantage.lambd 1, --algo.advantage.gamma 1",
        ),
        Source(
            "OpenRLHF/OpenRLHF",
            "openrlhf/cli/train_ppo_ray.py",
            "ed62d0e20dea08397251eba5e010ee9dabc4d048",
            "v0.10.2: dotted flags (--init_kl_coef -> --algo.kl.init_coef, ...; see OPENRLHF_FLAG_ALIASES)",
        ),
        Source(
            "OpenRLHF/OpenRLHF",
            "openrlhf/cli/train_ppo_ray.py",
            "8ff739782e992c235f19400b7f0c2c8c27d571d0",
            "March 2025 (first released in v0.6.4): --lambd default 0.95 -> 1",
        ),
    ),
    "trl": (
        Source(
            "pypi:trl",
            "trl/trainer/grpo_trainer.py",
            "1.16.0",
            "GRPOTrainer._compute_loss: per_token_kl = exp(ref - logp) - (ref - logp) - 1, times coef_1 if "
            "use_bias_correction_kl; loss += beta * per_token_kl",
        ),
        Source(
            "pypi:trl",
            "trl/trainer/grpo_config.py",
            "1.16.0",
            "defaults: beta 0.0, num_iterations 1, use_bias_correction_kl True, loss_type dapo, epsilon 0.2",
        ),
    ),
    "klnotes": (
        Source(
            "klnotes/klnotes",
            "klnotes/trl_plugin.py",
            "this repository",
            "principled_kl_token_loss: detached coefficient through the PPO ratio and clip",
        ),
    ),
}

#: Framework -> the version whose code the audit replicates.
VERSIONS = {
    "verl": "verl v0.9.0 (483b8a00)",
    "openrlhf": "OpenRLHF v0.11.0 (3c3be623)",
    "trl": "trl 1.16.0 (PyPI)",
    "klnotes": "klnotes.trl_plugin",
}

#: What the audit's formulas hold for, beyond the release ranges (read from the sources above);
#: :data:`klnotes.frameworks.versions.COVERS` joins it to the ranges of the table ``RELEASES``
#: there, so that no release range is written twice.
HOLDS: dict[str, str] = {
    "verl": "formulas read at the newest release (kl_penalty_forward); the '+' straight-through "
    "types need v0.8.0 or later (earlier versions raise NotImplementedError for them)",
    "openrlhf": "formulas read at each release tag from v0.9.0 (the same compute_approx_kl "
    "values; the code was restructured in v0.9.9; the [-10, 10] clamp is new in v0.8.6, "
    "d90b3d1f: the audit says so for older releases); older ranges give flags, defaults and the "
    "clamp only; flags spelled --algo.kl.* since v0.10.2 (the older spellings are aliases); "
    "KL-loss aggregation: a token mean over the whole optimizer step since v0.10.3/v0.10.4 (a "
    "masked mean per micro-batch before)",
    "trl": "formulas of the installed release (its code is run by the tests); beta defaults to 0 "
    "since v0.19",
    "klnotes": "this repository",
}


#: OpenRLHF's current (v0.10.2+) flag spelling -> the spelling before v0.10.2 (for the flags the audit reads).
OPENRLHF_FLAG_ALIASES: dict[str, str] = {
    "--algo.kl.init_coef": "--init_kl_coef",
    "--algo.kl.estimator": "--kl_estimator",
    "--algo.kl.use_loss": "--use_kl_loss",
    "--algo.advantage.estimator": "--advantage_estimator",
    "--algo.advantage.lambd": "--lambd",
    "--algo.advantage.gamma": "--gamma",
    "--algo.kl.target": "--kl_target",
    "--algo.kl.horizon": "--kl_horizon",
    "--train.max_epochs": "--max_epochs",
    "--rollout.n_samples_per_prompt": "--n_samples_per_prompt",
    "--actor.eps_clip": "--eps_clip",
}
