"""Segmentation training (``cemkit finetune``): DeepEM3D-style models on any timm encoder.

- :mod:`cemkit.finetune.data`: image/label volumes, k-frame inputs, patch sampling, augmentation.
- :mod:`cemkit.finetune.losses`: CE/BCE, Dice, focal, class weights, auto-balance, deep supervision.
- :mod:`cemkit.finetune.module`: the LightningModule.
- :mod:`cemkit.finetune.initialization`: ``model.init`` (none, encoder weights, segmenter, zoo).
- :mod:`cemkit.finetune.inputs`: the data step (volumes, norms, loaders).
- :mod:`cemkit.finetune.build`: the build step (segmenter from ``model.init``, loss, module).
- :mod:`cemkit.finetune.fit`: the fit step (one model: resume, Lightning fit, result.json).
- :mod:`cemkit.finetune.orchestrate`: which models, from which start (init, chain, trunk), which budget.
- :mod:`cemkit.finetune.command`: the CLI stage.

The checkpoint format it writes is :mod:`cemkit.models.checkpoint` (``load_segmenter`` /
``save_segmenter``); the k-frame slice indexing is :mod:`cemkit.models.frames`.
"""
