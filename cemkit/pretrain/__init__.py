"""Self-supervised MoCo v2 pretraining of timm encoders on EM patches (``cemkit pretrain``).

- :mod:`cemkit.pretrain.moco`: EMA update, queue, InfoNCE, Shuffle-BN (DDP and split-BN), ``MoCoV2``
- :mod:`cemkit.pretrain.augment`: the two-view EM augmentation pipeline (OpenCV, one warp per view)
- :mod:`cemkit.pretrain.data`: corpus / image-folder sources, step-indexed data order, data module
- :mod:`cemkit.pretrain.module`: the LightningModule (optimiser, schedule, logging)
- :mod:`cemkit.pretrain.monitoring`: view-pair grid at the start of a run
- :mod:`cemkit.pretrain.export`: encoder-only export (``cemkit export``)
- :mod:`cemkit.pretrain.command`: the Hydra command
"""
