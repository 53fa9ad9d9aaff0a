"""Execute chapter notebooks in place, so the book shows fresh stored outputs.

Usage:
    KLNOTES_SCALE=cpu python scripts/run_chapters.py book/01_kl_objective.ipynb [more.ipynb ...]
    KLNOTES_SCALE=gpu python scripts/run_chapters.py book/*.ipynb     # on a GPU machine

The scale preset is read by every chapter from ``KLNOTES_SCALE`` (see ``klnotes.scale``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (default 3600)")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if not path.is_file() or path.suffix != ".ipynb":
            parser.error(f"not a notebook: {path}")
        seconds = run(path, args.timeout)
        print(f"{path}: executed in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
