"""GRPO with a principled KL term (klnotes' TRL plug-in), on one process or many.

One process (CPU or one GPU)::

    python examples/train_grpo_kl.py                                  # tiny random GPT-2, offline, CPU-sized
    python examples/train_grpo_kl.py --model Qwen/Qwen2.5-0.5B --max-steps 200

Several GPUs, data parallel (DDP) or DeepSpeed ZeRO-2 (``pip install deepspeed``)::

    accelerate launch --config_file examples/accelerate/ddp.yaml   examples/train_grpo_kl.py --model Qwen/Qwen2.5-0.5B
    accelerate launch --config_file examples/accelerate/zero2.yaml examples/train_grpo_kl.py --model Qwen/Qwen2.5-0.5B

Two CPU processes (gloo), as the tests run it (accelerate 1.x's ``--cpu`` flag picks its one-process
launcher, so start the processes with the DDP config and ask the script for the CPU)::

    CUDA_VISIBLE_DEVICES= accelerate launch --config_file examples/accelerate/ddp.yaml --num_processes 2 \\
        --mixed_precision no examples/train_grpo_kl.py --cpu --max-steps 2

``--per-device-batch`` completions per process and micro-batch; the global batch of one optimizer step
is ``per_device_batch * processes * grad_accum`` completions, and the KL term's gradient is that of
``beta`` times the mean, over all of them, of each sequence's KL (``tests/test_trl_plugin_ddp.py``
checks that two processes give the gradient of one). The prompts and the reward below are a toy task
(say the word ``a`` often); replace :func:`prompts` and :func:`reward` with yours.
"""

from __future__ import annotations

import argparse
import os


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default="tiny",
        help='a model path or hub id; "tiny" (default) builds a tiny '
        "random GPT-2 under --output-dir, offline",
    )
    p.add_argument(
        "--kl",
        default="k1_in_reward",
        choices=["k1_in_reward", "k2_as_loss", "none"],
        help='the principled KL term; "none" keeps TRL\'s own KL term (k3)',
    )
    p.add_argument("--level", default="sequence", choices=["sequence", "token"])
    p.add_argument(
        "--beta", type=float, default=0.05, help="coefficient of the KL of whole sequences (> 0)"
    )
    p.add_argument(
        "--num-iterations", type=int, default=2, help="optimizer steps per generated batch"
    )
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument(
        "--per-device-batch", type=int, default=8, help="completions per process and micro-batch"
    )
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument(
        "--num-generations", type=int, default=4, help="completions per prompt (a GRPO group)"
    )
    p.add_argument("--max-completion-length", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--output-dir", default="grpo_kl_out")
    p.add_argument("--cpu", action="store_true", help="train on the CPU (gloo across processes)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.beta > 0:
        p.error(f"--beta must be > 0 for a KL term; got {args.beta}")
    return args


def prompts(n: int = 64) -> list[str]:
    """A toy prompt set: pairs of letters."""
    letters = "abcdefgh"
    return [f"{letters[i % 8]} {letters[(3 * i + 1) % 8]}" for i in range(n)]


def reward(completions, **kwargs) -> list[float]:
    """A verifiable toy reward: how often the word ``a`` occurs."""
    return [float(c.split().count("a")) for c in completions]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig

    from klnotes.trl_plugin import PrincipledKL, PrincipledKLGRPOTrainer, tiny_gpt2

    state = PartialState(cpu=args.cpu)
    model = args.model
    if model == "tiny":
        model = os.path.join(args.output_dir, "tiny-gpt2")
        if state.is_main_process and not os.path.exists(os.path.join(model, "config.json")):
            tiny_gpt2(model)
        state.wait_for_everyone()
    on_gpu = torch.cuda.is_available() and not args.cpu
    config = GRPOConfig(
        output_dir=args.output_dir,
        beta=args.beta,
        num_iterations=args.num_iterations,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_batch,
        gradient_accumulation_steps=args.grad_accum,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        seed=args.seed,
        use_cpu=args.cpu,
        bf16=on_gpu,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    kl = None if args.kl == "none" else PrincipledKL(name=args.kl, level=args.level)
    trainer = PrincipledKLGRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts()}),
        processing_class=AutoTokenizer.from_pretrained(model),
        kl=kl,
    )
    trainer.train()
    history = trainer.state.log_history
    last = {
        "kl": [h["kl"] for h in history if "kl" in h][-1],
        "reward": [h["reward"] for h in history if "reward" in h][-1],
        "steps": trainer.state.global_step,
        "processes": state.num_processes,
        "distributed": trainer.accelerator.distributed_type.value,
    }
    if state.is_main_process:
        print(
            " ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()
            ),
            flush=True,
        )
    return last


if __name__ == "__main__":
    main()
