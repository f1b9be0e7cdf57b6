"""``cemkit study``: how many labelled slices a volume needs, and which encoder init to start from.

- :mod:`cemkit.study.slices`: slice specs, the train/test split checks, even spacing, folds (pure).
- :mod:`cemkit.study.data`: the labelled volume and the slice subsets written for the runs.
- :mod:`cemkit.study.runs`: one run (finetune -> predict -> pooled IoU) in its own folder.
- :mod:`cemkit.study.pipeline`: the plan, the loop over runs (resume, failed inits).
- :mod:`cemkit.study.report`: ``study.csv``, ``folds.csv`` and ``report.html``.
- :mod:`cemkit.study.command`: the CLI stage. See docs/study.md.
"""
