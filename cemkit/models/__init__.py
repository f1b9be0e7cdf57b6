"""Network building blocks shared by the stages.

- :mod:`cemkit.models.encoders`: timm encoder creation and the one loader for encoder weights
  (cemkit exports, CEM500K/cellemnet MoCo, CEM1.5M SwAV, plain timm/torchvision state dicts).
- :mod:`cemkit.models.deepem3d`: DeepEM3D-style decoder and segmentation model.
- :mod:`cemkit.models.checkpoint`: the segmenter checkpoint format (``load_segmenter`` /
  ``save_segmenter``) that finetune writes and predict, export and the zoo read.
- :mod:`cemkit.models.frames`: which slices a k-frame model reads (training and prediction).
- :mod:`cemkit.models.references`: ``zoo:NAME`` settings, resolved by the zoo the layer above registers.

Import the submodules directly; this package imports nothing heavy.
"""
