"""The tiny GPT-2 models and the training configuration that the trainer's tests share.

Each test file derives what it needs from these with :func:`dataclasses.replace`, so that the
shared fields are written once.
"""

from klnotes.gpt2 import policies
from klnotes.gpt2 import trainer as TR

#: A 1-layer, 16-wide GPT-2 on an 8-word synthetic language, pretrained 30 steps (a few seconds).
TINY = policies.TinyLMConfig(
    n_words=8,
    n_layer=1,
    n_embd=16,
    n_head=2,
    n_positions=32,
    pretrain_steps=30,
    batch_size=16,
    lr=1e-2,
    end_prob=0.25,
)

#: The smallest model worth loading: 1 layer, 8 wide, 6 words, pretrained 2 steps.
SMALL = policies.TinyLMConfig(
    n_words=6, n_layer=1, n_embd=8, n_head=2, n_positions=16, pretrain_steps=2, batch_size=4
)

#: Four steps of 2 prompts x 4 completions of up to 8 tokens, two updates per batch.
CONFIG = TR.TrainConfig(
    kl="k2-loss-is",
    beta=0.1,
    group_size=4,
    prompts_per_step=2,
    max_new_tokens=8,
    updates_per_batch=2,
    lr=1e-2,
    steps=4,
    checkpoint_every=2,
)
