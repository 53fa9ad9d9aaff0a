"""Shared helper of the tests that execute chapters at the ``gpu`` scale (no GPU needed).

Each chapter runs in a fresh kernel, with nbclient, with ``KLNOTES_SCALE=gpu``, results and trainer
checkpoints in a temporary folder (never the repository's ``results/``), and, for chapters 7 and 8,
``KLNOTES_POLICY`` pointing at a GPT-2-shaped stand-in (:func:`klnotes.gpt2.policies.gpt2_standin`: GPT-2's
vocabulary and BPE tokenizer, two narrow layers, random weights) and ``KLNOTES_PRESET_OVERRIDES``
shrinking the steps and samples, so that the gpu code path runs in CI time on a CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

BOOK = Path(__file__).resolve().parents[1] / "book"


def execute(chapter: str, env: dict[str, str], timeout: int = 600) -> float:
    """Execute ``book/<chapter>`` with ``env`` added to the environment; return the seconds it took.

    Raises nbclient's ``CellExecutionError`` (with the failing cell and traceback) if any cell fails.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(BOOK / chapter, as_version=4)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment when it starts
    try:
        start = time.perf_counter()
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}
        ).execute()
        return time.perf_counter() - start
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
