"""Run ``PrincipledKLGRPOTrainer`` on the tiny GPT-2 for every configuration, as one process or under
``accelerate launch --num_processes 2 --cpu``, and save what ``tests/test_trl_plugin_ddp.py`` compares.

Usage: ``python tests/ddp_plugin_runner.py OUT_DIR`` (one process) or
``CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes 2 tests/ddp_plugin_runner.py OUT_DIR``
(two CPU processes, gloo: accelerate 1.x's ``--cpu`` flag selects its single-process launcher, so the
processes are started by the ``--multi_gpu`` launcher, torchrun, and the script asks for the CPU);
rank 0 writes ``OUT_DIR/world{N}.pt``.

Every run uses the same global batch: 8 completions per optimizer step (4 prompts x 2 generations).
One process holds all 8 at once (no accumulation); two processes hold 8 / (2 * ga) each per micro-batch,
``ga`` in (1, 2). Generation is replaced (through TRL's public ``rollout_func``) by a deterministic draw
keyed by the optimizer step and the *global* row, so the two layouts see identical completions; the
prompt sampler, rewards, group advantages, reference and behaviour log-probs, the loss, DDP's gradient
averaging, accumulation and AdamW are TRL's / transformers' / accelerate's own. The reference model is
the policy plus fixed noise, so the KL term (and its gradient) is not zero at the first step.

Two reward variants: ``"zero"`` (all rewards 0, so all advantages 0 and the gradient is the KL term's
alone) and ``"count"`` (the number of ``a`` words: the whole GRPO update). Gradient clipping is off, so
that the recorded gradient is the raw accumulated, all-reduced one, and the optimizer is plain SGD, so
that the update is ``-lr`` times that gradient (AdamW divides by ``sqrt(v)``, which turns float noise
on near-zero gradient coordinates into visible parameter differences; it acts after the all-reduce,
per parameter, so it cannot change what the split means).
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile

import torch

from klnotes import trl_plugin as P

GLOBAL_BATCH, NUM_GENERATIONS, STEPS, BETA, MAX_LEN = 8, 2, 4, 0.3, 6
REWARDS = ("zero", "count")


def configurations(world: int):
    """(name, level, ga, num_iterations, reward) to run; one process runs ga = 1 only (the reference)."""
    gas = (1, 2) if world > 1 else (1,)
    return list(itertools.product(P.KL_NAMES, P.LEVELS, gas, (1, 2), REWARDS))


def rollout(prompts, trainer):
    """Deterministic completions keyed by (optimizer step, global row): same batch whatever the split."""
    tok = trainer.processing_class
    n, rank = len(prompts), trainer.accelerator.process_index
    vocab, eos = len(tok), tok.eos_token_id
    prompt_ids, completion_ids = [], []
    for i, prompt in enumerate(prompts):
        gen = torch.Generator().manual_seed(100_003 * trainer.state.global_step + rank * n + i)
        length = int(torch.randint(1, MAX_LEN + 1, (1,), generator=gen))
        ids = torch.randint(2, vocab, (length,), generator=gen).tolist()
        prompt_ids.append(tok(prompt)["input_ids"])
        completion_ids.append(ids + [eos] if length < MAX_LEN else ids)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


def zero_reward(completions, **kwargs):
    return [0.0] * len(completions)


def flat_grad(model) -> torch.Tensor:
    return torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in model.parameters()]
    )


def build(model_dir, out_dir, name, level, ga, nit, reward, world):
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig

    base = P._trainer_class()

    class Recording(base):
        """Records every micro-batch's inputs, to rebuild the global batch at the optimizer step."""

        def _compute_loss(self, model, inputs):
            keep = (
                "prompt_ids",
                "prompt_mask",
                "completion_ids",
                "completion_mask",
                "ref_per_token_logps",
                "old_per_token_logps",
            )
            self.records.append(
                {k: inputs[k].detach().cpu() for k in keep if inputs.get(k) is not None}
            )
            return super()._compute_loss(model, inputs)

    args = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=GLOBAL_BATCH // (world * ga),
        gradient_accumulation_steps=ga,
        num_generations=NUM_GENERATIONS,
        num_iterations=nit,
        max_completion_length=MAX_LEN,
        max_steps=STEPS,
        beta=BETA,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        learning_rate=0.1,
        optim="sgd",
        seed=0,
        disable_tqdm=True,
        bf16=False,
        max_grad_norm=0.0,
    )
    data = Dataset.from_dict(
        {"prompt": ["a b", "c d", "e f", "g h", "a c", "b d", "e g", "f h"] * 2}
    )
    reward_func = zero_reward if reward == "zero" else P.count_letter_reward()
    tr = Recording(
        model=model_dir,
        reward_funcs=reward_func,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        rollout_func=rollout,
        kl=P.PrincipledKL(name=name, level=level),
    )
    from transformers.trainer_callback import PrinterCallback

    tr.remove_callback(PrinterCallback)
    tr.records, tr.out = [], {"grads": [], "expected_kl_grads": [], "seq_kl": [], "batches": []}
    with torch.no_grad():  # the reference model: policy + fixed noise (same on every rank)
        gen = torch.Generator().manual_seed(1)
        for p in tr.ref_model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))

    class Record(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            record_step(tr)

    tr.add_callback(Record())
    return tr


def record_step(tr):
    """At the optimizer step: the all-reduced gradient, and the KL gradient expected from the global batch,
    ``beta * (1 / N) sum over the N global sequences of sum over tokens`` of the per-token KL head."""
    from accelerate.utils import gather_object

    model, kl = tr.model, tr.principled_kl
    tr.out["grads"].append(flat_grad(model).clone())
    records = gather_object([tr.records])  # list of each rank's list
    tr.records = []
    batch = [r for rank_records in records for r in rank_records]
    n_seq = sum(r["completion_ids"].size(0) for r in batch)
    params = list(model.parameters())
    total, seq_kl, rows = 0.0, [], []
    for r in batch:
        logp = P.completion_logps(model, r["prompt_ids"], r["completion_ids"], r["completion_mask"])
        old = r.get("old_per_token_logps", logp.detach())
        per_token = P.principled_kl_token_loss(
            kl.name,
            logp,
            r["ref_per_token_logps"],
            old,
            r["completion_mask"],
            level=kl.level,
            clip=kl.clip,
            epsilon_low=tr.epsilon_low,
            epsilon_high=tr.epsilon_high,
        )
        total = total + BETA * per_token.sum(-1).sum() / n_seq
        u = (logp.detach() - r["ref_per_token_logps"]) * r["completion_mask"]
        seq_kl.append(u.sum(-1))
        rows += [
            " ".join(map(str, p.tolist())) + " | " + " ".join(map(str, c[m.bool()].tolist()))
            for p, c, m in zip(r["prompt_ids"], r["completion_ids"], r["completion_mask"])
        ]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    tr.out["expected_kl_grads"].append(
        torch.cat(
            [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]
        )
    )
    tr.out["seq_kl"].append(float(torch.cat(seq_kl).mean()))
    tr.out["batches"].append(sorted(rows))


def main(out_dir: str) -> None:
    from accelerate import PartialState

    state = PartialState(cpu=True)  # gloo across processes when launched by torchrun / accelerate
    world = state.num_processes
    model_dir = os.path.join(out_dir, "tiny-gpt2")
    if state.is_main_process and not os.path.exists(os.path.join(model_dir, "config.json")):
        P.tiny_gpt2(model_dir)
    state.wait_for_everyone()
    results = {}
    for name, level, ga, nit, reward in configurations(world):
        with tempfile.TemporaryDirectory() as tmp:
            tr = build(model_dir, tmp, name, level, ga, nit, reward, world)
            initial = torch.cat([p.detach().flatten() for p in tr.model.parameters()]).clone()
            tr.train()
        out = tr.out
        out["update"] = torch.cat([p.detach().flatten() for p in tr.model.parameters()]) - initial
        out["log_kl"] = [h["kl"] for h in tr.state.log_history if "kl" in h]
        results[(name, level, ga, nit, reward)] = out
    if state.is_main_process:
        torch.save(results, os.path.join(out_dir, f"world{world}.pt"))
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
