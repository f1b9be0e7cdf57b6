"""cemkit: raw volume-EM data to segmentation models."""
__version__ = "0.1.0"
