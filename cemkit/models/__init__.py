"""Network building blocks shared by the stages.

- :mod:`cemkit.models.encoders`: timm encoder creation and the one loader for encoder weights
  (cemkit exports, CEM500K/cellemnet MoCo, CEM1.5M SwAV, plain timm/torchvision state dicts).
- :mod:`cemkit.models.deepem3d`: DeepEM3D-style decoder and segmentation model.

Import the submodules directly; this package imports nothing heavy.
"""
