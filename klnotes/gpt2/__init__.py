"""The GPT-2 experiments: policies, tasks, the trainer and its checkpoints, presets and stored
results, gradient comparisons on a transformer, and the GPU-scale run (chapters 7-8).

Modules: ``policies``, ``tasks``, ``trainer``, ``checkpoint``, ``experiments``, ``gradcompare``,
``gpu_results``, ``devices``.
"""

__all__: list[str] = []  # a folder of modules: import each by name
