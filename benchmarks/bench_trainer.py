"""Benchmark of :mod:`klnotes.trainer` (a script that prints a table; not a test).

1. Trainer step time against the *floor* at equal batch: generation of the same completions plus one
   forward/backward of each completion (in the same minibatches, one optimizer step each), with no
   bookkeeping (no reference model, no old/reference log-probabilities, no metrics). Two floors: generation by ``model.generate`` (Hugging Face) and by
   :func:`klnotes.trainer.sample` (the trainer's own KV-cache loop). Target: trainer <= 1.15 x floor.
2. Trainer against TRL's ``GRPOTrainer`` on the same tiny GPT-2 (saved to a folder), the same batch
   (``prompts x group`` completions of exactly ``tokens`` tokens: EOS is not sampled before), the same
   group size, two optimizer steps per generated batch, a reference model (beta > 0), and the same
   stopping rule (a fixed number of generated batches). Target: klnotes / TRL <= 1.0.

Both are measured in one process, alternating rounds, median seconds per generated batch after a
warm-up batch. Run: ``python benchmarks/bench_trainer.py [--device cuda] [--rounds 3] [--steps 6]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from klnotes import policies, tasks  # noqa: E402
from klnotes import trainer as TR  # noqa: E402


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_klnotes(folder, task, config, device) -> list[float]:
    """Seconds per step of :func:`klnotes.trainer.train` (first step dropped: warm-up)."""
    policy = policies.load_policy(folder, device=device)
    reference = policies.load_policy(folder, device=device)
    frame = TR.train(policy, reference, task, config, progress=False)
    return frame["seconds"].tolist()[1:]


def time_floor(folder, task, config, device, *, generator: str) -> list[float]:
    """Seconds per step of generation + one forward/backward of each completion, nothing else.

    The batch is split into the trainer's ``updates_per_batch`` minibatches, one optimizer step each, so
    that the floor does the same number of optimizer steps as the trainer.
    """
    policy = policies.load_policy(folder, device=device)
    model, tok = policy.model, policy.tokenizer
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    prompts = [p for p in task.prompts[: config.prompts_per_step] for _ in range(config.group_size)]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for _ in range(config.steps):
        _sync(device)
        began = time.perf_counter()
        if generator == "hf":
            with torch.no_grad():
                out = model.generate(**enc, do_sample=True, max_new_tokens=config.max_new_tokens,
                                     min_new_tokens=config.min_new_tokens, pad_token_id=tok.pad_token_id,
                                     top_k=0, top_p=1.0)
            ids = out[:, enc["input_ids"].size(1):]
        else:
            ids, _, _ = TR.sample(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=config.max_new_tokens,
                                  min_new_tokens=config.min_new_tokens, eos_id=tok.eos_token_id,
                                  pad_id=tok.pad_token_id, generator=gen)
        for rows in torch.arange(len(prompts), device=device).chunk(config.updates_per_batch):
            logp = TR.token_logprobs(model, enc["input_ids"][rows], enc["attention_mask"][rows], ids[rows])
            loss = -logp.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - began)
    return times[1:]


def time_trl(folder, task, config, device, workdir) -> list[float]:
    """Seconds per generated batch of TRL's ``GRPOTrainer`` (first batch dropped: warm-up)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    updates = config.updates_per_batch
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            stamps.append(time.perf_counter())

        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    def reward(completions, **kwargs):
        return task.reward(list(completions)).tolist()

    args = GRPOConfig(
        output_dir=os.path.join(workdir, "trl"), per_device_train_batch_size=config.batch_size // updates,
        steps_per_generation=updates, num_iterations=1, num_generations=config.group_size,
        max_completion_length=config.max_new_tokens, generation_kwargs={"min_new_tokens": config.min_new_tokens},
        max_steps=config.steps * updates, beta=config.beta, learning_rate=config.lr, epsilon=config.clip_eps,
        temperature=config.temperature, top_k=0, top_p=1.0, max_grad_norm=config.max_grad_norm or 0.0,
        use_cpu=torch.device(device).type == "cpu", bf16=False, report_to="none", logging_steps=10**6,
        save_strategy="no", seed=config.seed, disable_tqdm=True, lr_scheduler_type="constant", weight_decay=0.0,
    )
    data = Dataset.from_dict({"prompt": list(task.prompts)})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trainer = GRPOTrainer(model=str(folder), reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    per_batch = [stamps[i + updates] - stamps[i] for i in range(0, len(stamps) - updates, updates)]
    return per_batch[1:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each measurement")
    parser.add_argument("--steps", type=int, default=6, help="generated batches per measurement (first dropped)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--preset", default="cpu", choices=sorted(policies.TINY_PRESETS))
    parser.add_argument("--updates", type=int, default=2, help="minibatch updates per generated batch")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    tiny = policies.TINY_PRESETS[args.preset]
    folder = policies.tiny_cache_path(tiny)
    policies.tiny_policy(tiny)  # build the cache once
    task = tasks.synthetic_task(tiny)
    config = TR.TrainConfig(kl="k2-loss-is", beta=0.1, group_size=args.group, prompts_per_step=args.prompts,
                            max_new_tokens=args.tokens, min_new_tokens=args.tokens, updates_per_batch=args.updates,
                            lr=1e-3, steps=args.steps, checkpoint_every=0)
    print(f"device {args.device}; tiny GPT-2 preset {args.preset!r} ({folder.name}); batch {config.batch_size} "
          f"= {args.prompts} prompts x {args.group}, {args.tokens} tokens each, {config.updates_per_batch} updates "
          f"per batch; {args.rounds} rounds x {args.steps - 1} timed batches; torch threads {torch.get_num_threads()}")
    results: dict[str, list[float]] = {k: [] for k in ("floor (HF generate)", "floor (klnotes sample)", "klnotes", "TRL GRPOTrainer")}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            results["floor (HF generate)"] += time_floor(folder, task, config, args.device, generator="hf")
            results["floor (klnotes sample)"] += time_floor(folder, task, config, args.device, generator="klnotes")
            results["klnotes"] += time_klnotes(folder, task, config, args.device)
            results["TRL GRPOTrainer"] += time_trl(folder, task, config, args.device, workdir)
    median = {k: statistics.median(v) for k, v in results.items()}
    low = {k: min(v) for k, v in results.items()}
    print(f"\n{'measurement':<24} {'median s/batch':>15} {'min s/batch':>12} {'klnotes/this (median)':>22} "
          f"{'(min)':>6}")
    for name in results:
        print(f"{name:<24} {median[name]:>15.4f} {low[name]:>12.4f} {median['klnotes'] / median[name]:>22.3f} "
              f"{low['klnotes'] / low[name]:>6.3f}")
    for stat, values in (("median", median), ("min", low)):
        print(f"{stat}: klnotes / floor (HF generate) = {values['klnotes'] / values['floor (HF generate)']:.3f}, "
              f"klnotes / floor (klnotes sample) = {values['klnotes'] / values['floor (klnotes sample)']:.3f} "
              f"(target <= 1.15); klnotes / TRL = {values['klnotes'] / values['TRL GRPOTrainer']:.3f} (target <= 1.0)")


if __name__ == "__main__":
    main()
