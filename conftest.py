"""Test-wide settings: chapters run at smoke scale and never touch the network.

A reader who wants the chapters tested at another scale sets KLNOTES_SCALE before pytest.
Environment variables set here reach the notebook kernels that nbval starts.
"""

import os

os.environ.setdefault("KLNOTES_SCALE", "smoke")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_MININTERVAL", "5")
# pytest-xdist runs one worker per core: one torch thread each avoids oversubscribing the CPU
# (on a 2-core machine small tensor operations ran ~100x slower with 2 threads per worker).
os.environ.setdefault("OMP_NUM_THREADS", "1")
