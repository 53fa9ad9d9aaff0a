"""GPU results in one command (issue 13's plan, prepared without a GPU): model, timing, sized runs.

Run by ``scripts/gpu_results.sh`` (which installs the project first). Steps, all within ``--budget`` seconds:

1. **Model.** No machine of the project reaches the Hugging Face hub, so the policy is built here: GPT-2's
   architecture (``--layers`` x ``--width``; 12 x 768 is GPT-2 124M) with GPT-2's 50,257-token BPE tokenizer
   (:func:`klnotes.policies.gpt2_standin`), pretrained for ``--pretrain-s`` seconds (next-token cross-entropy,
   AdamW, under autocast on a GPU) on English text every Python has offline: the standard library's
   ``pydoc_data.topics`` (the help texts of the language, 465k characters). Saved under ``$OUT/model``.
2. **Task.** Prompts: the first four words of sentences of that corpus. Reward (eq-8-word-reward): the
   number of *target words* in the completion, capped at 4, divided by 4; targets: 30 words of moderate
   frequency in the corpus (ranks 150-179 among words of 4+ letters), which the pretrained model says rarely but not never.
3. **Timing.** 20 RL steps of the ``k2-loss`` arm at the gpu preset's batch (``--probe-steps``), timed.
4. **Sized runs.** With the time left, the largest part of the experiment set, in this order: the five arms at
   beta = 0.5 with two seeds; the off-policy ablation (k2/k3 as loss, plain and IS-corrected, 1/2/4 updates
   per batch); the five arms at beta = 0.05. Steps per run are ``min(preset steps, what fits)``; a part
   that does not fit with at least ``--min-steps`` steps is skipped and reported.

Writes ``$OUT/results/<preset>/`` (the chapters' CSV layout, ``KLNOTES_RESULTS``), ``$OUT/timings.json``
(pretraining, probe and per-run seconds, steps, peak GPU memory, tokens per second) and ``$OUT/model``.
``--toy`` shrinks everything so that the whole script runs on a CPU in a few minutes (its test).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path


def corpus_sentences() -> list[str]:
    """Sentences (40-400 characters, letters and punctuation) of ``pydoc_data.topics``, in a fixed order."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    text = re.sub(r"\s+", " ", text)
    return [s.strip() for s in re.split(r"(?<=[.!?])\s", text) if 40 <= len(s.strip()) <= 400]


def corpus_task(sentences: list[str], n_prompts: int = 64):
    """The task of step 2: prompts and the word-count reward on mid-frequency target words."""
    from klnotes.tasks import Task, WordCountReward

    counts = Counter(w for s in sentences for w in re.findall(r"[a-z]{4,}", s.lower()))
    targets = frozenset(w for w, _ in counts.most_common()[150:180])
    starts = [" ".join(s.split()[:4]) for s in sentences if len(s.split()) > 8]
    prompts = tuple(dict.fromkeys(starts))[:n_prompts]
    return Task(name="corpus-words", prompts=prompts, reward=WordCountReward(targets, 4),
                description=f"target words of pydoc_data.topics ({', '.join(sorted(targets)[:5])}, ...) in the "
                            "completion, capped at 4, divided by 4")


def pretrain(folder: Path, sentences: list[str], seconds: float, device: str, batch: int = 32, block: int = 64) -> dict:
    """Pretrain the saved model in ``folder`` on ``sentences`` for ``seconds``; save it back. Returns stats."""
    import torch

    from klnotes import devices, policies

    policy = policies.load_policy(folder, device=device)
    model, tok = policy.model, policy.tokenizer
    ids = torch.tensor(tok(" ".join(sentences))["input_ids"], dtype=torch.long)
    n_blocks = ids.numel() // block
    data = ids[: n_blocks * block].view(n_blocks, block)
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.0)
    model.train()
    start, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < seconds:
        x = data[torch.randint(n_blocks, (batch,), generator=gen)].to(device)
        with devices.autocast(device, training=True):
            loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
        if steps % 20 == 0 or steps == 1:
            losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(folder)
    return {"pretrain_steps": steps, "pretrain_seconds": time.perf_counter() - start, "corpus_tokens": int(ids.numel()),
            "loss_first": losses[0] if losses else None, "loss_last": float(loss.detach()) if steps else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for everything after the install")
    parser.add_argument("--device", default=None)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--pretrain-s", type=float, default=120.0)
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--min-steps", type=int, default=20)
    parser.add_argument("--toy", action="store_true", help="tiny sizes: the script's own test on a CPU")
    args = parser.parse_args(argv)
    if args.toy:
        args.layers, args.width, args.pretrain_s, args.probe_steps, args.min_steps = 1, 32, 5.0, 2, 2
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    began = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ["KLNOTES_RESULTS"] = str(out / "results")
    os.environ.setdefault("KLNOTES_RUNS", str(out / "runs"))
    from klnotes import devices, experiments, policies

    devices.configure(device)
    timings: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                     "model": {"layers": args.layers, "width": args.width}, "runs": []}

    def save():
        timings["total_seconds"] = time.perf_counter() - began
        if device == "cuda":
            timings["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        (out / "timings.json").write_text(json.dumps(timings, indent=1))

    sentences = corpus_sentences()
    folder = policies.gpt2_standin(out / "model", n_layer=args.layers, n_embd=args.width,
                                   n_head=max(1, args.width // 64), n_positions=1024, pretrain_steps=0)
    timings["pretrain"] = pretrain(folder, sentences, args.pretrain_s, device)
    task = corpus_task(sentences)
    save()
    print(f"model: {args.layers} x {args.width}, pretrained {timings['pretrain']['pretrain_steps']} steps "
          f"(loss {timings['pretrain']['loss_first']} -> {timings['pretrain']['loss_last']})", flush=True)

    base = experiments.PRESETS["gpu"]
    if args.toy:
        import dataclasses

        base = dataclasses.replace(base, steps=3, group_size=4, prompts_per_step=2, max_new_tokens=4, ablation_steps=3)
    reference = policies.frozen(policies.load_policy(folder, device=device))

    def train(arm, beta, seed, steps, updates=1, experiment="arms"):
        import copy

        from klnotes import trainer

        policy = policies.Policy(model=copy.deepcopy(reference.model).requires_grad_(True), tokenizer=reference.tokenizer,
                                 source=reference.source)
        config = base.train_config(arm, beta=beta, seed=seed, updates_per_batch=updates, steps=steps)
        t = time.perf_counter()
        frame = trainer.train(policy, reference, task, config, run_dir=None, progress=False)
        seconds = time.perf_counter() - t
        spec = experiments.RunSpec(experiment, arm, float(beta), int(seed), int(updates))
        frame = frame.reset_index(drop=True)
        for i, (name, value) in enumerate({**spec.columns(), "policy": f"pretrained-pydoc-{args.layers}x{args.width}"}.items()):
            frame.insert(i, name, value)
        experiments.ResultsStore(Path(os.environ["KLNOTES_RESULTS"]) / "gpu").save(spec.key, frame)
        tokens = float(frame["response_length"].sum() * config.batch_size)
        timings["runs"].append({"key": spec.key, "steps": steps, "seconds": seconds,
                                "seconds_per_step": seconds / max(steps, 1), "tokens_per_second": tokens / seconds})
        save()
        return seconds / max(steps, 1)

    per_step = train("k2-loss", base.beta, 100, args.probe_steps, experiment="probe")
    timings["probe_seconds_per_step"] = per_step
    print(f"probe: {per_step:.3f} s per step", flush=True)
    parts = [
        ("arms beta 0.5, 2 seeds", [(a, base.beta, s, 1, "arms") for s in (0, 1) for a in base.arms]),
        ("off-policy ablation", [(a, base.beta, 0, u, "offpolicy") for u in base.ablation_updates
                                 for pair in experiments.OFF_POLICY_PAIRS for a in pair]),
        ("arms beta 0.05", [(a, 0.05, 0, 1, "arms") for a in base.arms]),
    ]
    timings["skipped"] = []
    for name, runs in parts:
        left = args.budget - (time.perf_counter() - began)
        steps = min(base.steps, int(left / (per_step * 1.15 * len(runs))))
        if steps < args.min_steps:
            timings["skipped"].append({"part": name, "seconds_left": left, "steps_that_would_fit": steps})
            print(f"skipped {name}: {steps} steps per run would fit", flush=True)
            continue
        for arm, beta, seed, updates, experiment in runs:
            train(arm, beta, seed, steps, updates, experiment)
        print(f"{name}: {len(runs)} runs x {steps} steps", flush=True)
    save()
    print(json.dumps({k: v for k, v in timings.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
