"""The package's data files (``klnotes/data/``): word lists and prompts of the GPT-2 task.

Read by :mod:`klnotes.gpt2.tasks` (the task's prompts and reward words) and :mod:`klnotes.gpt2.policies` (the
stand-in model's pretraining texts), so that neither imports the other for them.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["read_lines"]


def read_lines(name: str) -> tuple[str, ...]:
    """Non-empty, non-comment lines of the package data file ``klnotes/data/<name>``, stripped.

    The prompts and the positive words of :doc:`chapter 8 </book/08_gpt2_training>`'s task, whose
    reward :eq:`eq-8-reward` counts the words; ``name``: a file of ``klnotes/data/``.

    Raises:
        FileNotFoundError: no such file in ``klnotes/data/``.
    """
    text = resources.files("klnotes").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )
