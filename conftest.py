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
