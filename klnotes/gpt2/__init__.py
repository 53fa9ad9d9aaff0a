"""The GPT-2 experiments: policies, tasks, the trainer and its checkpoints, presets and stored
results, gradient comparisons on a transformer, and the GPU-scale run (chapters 7-8).

Modules: ``policies`` (loading, the tiny model, the GPT-2 stand-in), ``language`` (the synthetic
language), ``tasks``; the trainer: ``trainconfig`` (arms, metrics, config), ``losses``,
``rollout``, ``trainer`` (the loop), ``checkpoint``; the experiments: ``presets``, ``store``
(results store, run ids, validation), ``experiments`` (running), ``sizing``, ``tables``; chapter 7's
gradients: ``responses``, ``gradients`` (the estimators), ``gradcompare`` (comparison and sweep);
``gpu_results``, ``devices``.
"""

__all__: list[str] = []  # a folder of modules: import each by name
