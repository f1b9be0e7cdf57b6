"""The description that travels inside every exported model file."""

from __future__ import annotations

from typing import Any

from cemkit import __version__

FORMAT = "cemkit-exported-segmenter"
VERSION = 1


def export_metadata(model, meta: dict[str, Any], output: str, source: str | None = None
                    ) -> dict[str, Any]:
    """Plain-JSON metadata of an exported segmenter.

    Keys: ``format``, ``version``, ``arch``, ``frames``, ``num_classes``, ``norms`` ([mean, std] of
    uint8/255 intensities, or None), ``output`` (``probabilities`` or ``logits``), ``stride``,
    ``input`` and ``output_description`` (how to prepare the input and read the output),
    ``class_names``, ``pixel_size_nm`` (the yx pixel size the model was trained at, or None),
    ``cemkit_version`` and ``source`` (the checkpoint).
    """
    norms = meta.get("norms")
    pixel_nm = meta.get("pixel_size_nm")  # absent in checkpoints from before pixel sizes were recorded
    frames = int(meta.get("frames", model.frames))
    num_classes = int(meta.get("num_classes", model.num_classes))
    binary = num_classes == 2
    if output == "probabilities":
        out = ("foreground probability (B, 1, H, W)" if binary
               else f"class probabilities (B, {num_classes}, H, W), softmax over channels")
    else:
        out = ("foreground logit (B, 1, H, W); sigmoid gives the probability" if binary
               else f"class logits (B, {num_classes}, H, W)")
    norm_text = (f"(x / 255 - {norms[0]:.8g}) / {norms[1]:.8g}" if norms is not None
                 else "normalised as during training")
    scale_text = ("" if pixel_nm is None else
                  f"; trained at {float(pixel_nm):g} nm per pixel: resample other data to it in y and x")
    return {
        "format": FORMAT, "version": VERSION,
        "arch": meta.get("arch", getattr(model, "arch", None)),
        "frames": frames, "num_classes": num_classes,
        "norms": None if norms is None else [float(norms[0]), float(norms[1])],
        "output": output, "stride": int(model.max_stride),
        "input": (f"float32 (B, {frames}, H, W): {frames} consecutive z-slices of uint8 intensity x, "
                  f"each {norm_text}; the output is the centre slice; any H, W{scale_text}"),
        "output_description": out,
        "class_names": meta.get("class_names"),
        "pixel_size_nm": None if pixel_nm is None else float(pixel_nm),
        "cemkit_version": __version__,
        "source": source,
    }
