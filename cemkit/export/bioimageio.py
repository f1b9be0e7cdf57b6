"""Export a finetuned segmenter as a BioImage Model Zoo package (napari, ilastik, deepImageJ).

The package holds TorchScript and ONNX weights (both checked against PyTorch), a test input (a
deterministic synthetic EM tile) and the matching test output, a cover image, a README and an
``rdf.yaml`` (bioimage.io model spec 0.5) that declares the cemkit normalisation as preprocessing:
``fixed_zero_mean_unit_variance`` with ``mean = 255 * norm_mean`` and ``std = 255 * norm_std`` on
the raw 0-255 intensities, i.e. exactly ``(x / 255 - mean) / std``.

The package is validated with ``bioimageio.core.test_model`` (format checks plus running the test
input through every weight format and comparing with the test output) before it is moved into
place. Needs the optional ``bioimageio.core`` package (``pip install 'cemkit[bioimageio]'``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cemkit.errors import CemkitError, ConfigError
from cemkit.export.check import ExportCheckError
from cemkit.export.onnx import export_onnx
from cemkit.export.torchscript import export_torchscript
from cemkit.io.atomic import atomic_path

logger = logging.getLogger(__name__)

CEM500K_CITATION = {
    "text": "Conrad R, Narayan K. CEM500K, a large-scale heterogeneous unlabeled cellular electron "
            "microscopy image dataset for deep learning. eLife 2021;10:e65894.",
    "doi": "10.7554/eLife.65894",
}


def _require() -> None:
    """Fail clearly when bioimageio.core is missing or cannot work with the installed pydantic."""
    try:
        import bioimageio.core  # only checked for here: test_model is imported where it runs
        import bioimageio.spec
        import pydantic
        from bioimageio.spec.model import v0_5 as spec
    except ImportError as exc:
        raise CemkitError(
            "BioImage Model Zoo export needs bioimageio.core: pip install 'cemkit[export]' "
            f"({exc.name} is missing)") from None
    try:  # bioimageio.spec 0.5.12 cannot serialise file entries with pydantic >= 2.14
        spec.FileDescr(source=Path(__file__)).model_dump(mode="json")
    except Exception as exc:  # noqa: BLE001
        raise CemkitError(
            f"bioimageio.spec {bioimageio.spec.__version__} does not work with pydantic "
            f"{pydantic.VERSION} ({type(exc).__name__}: {str(exc)[:160]}); install "
            f"'pydantic<2.14' (pip install 'cemkit[export]') or a newer bioimageio.spec") from None


def _test_input(frames: int, tile: int, seed: int = 0) -> np.ndarray:
    """Raw 0-255 float32 test input ``(1, frames, tile, tile)`` cut from a synthetic EM volume."""
    from cemkit.data.synthetic import make_volume

    depth = max(frames, 3)
    volume = make_volume(shape=(depth, tile, tile), seed=seed, style=0)
    z0 = (depth - frames) // 2
    return volume.image[z0:z0 + frames][None].astype(np.float32)


def _cover(image: np.ndarray, prediction: np.ndarray, path: Path) -> None:
    """2:1 cover: the centre input slice (left) beside the first output channel (right)."""
    from PIL import Image

    left = np.clip(image, 0, 255).astype(np.uint8)
    lo, hi = float(prediction.min()), float(prediction.max())
    right = ((prediction - lo) / (hi - lo + 1e-12) * 255).astype(np.uint8)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def export_bioimageio(model, meta: dict[str, Any], path: str | os.PathLike, *, tile: int = 256,
                      output: str = "probabilities", opset: int = 17, tolerance: float = 1e-4,
                      weight_formats: Sequence[str] = ("torchscript", "onnx"),
                      name: str | None = None, description: str | None = None,
                      authors: Sequence[str] = (), licence: str = "CC-BY-4.0",
                      tags: Sequence[str] = (), cite: Sequence[dict[str, str]] = (),
                      source: str | None = None) -> Path:
    """Write a validated bioimage.io model package: ``path`` ending in ``.zip`` or a folder.

    Raises
    ------
    CemkitError
        bioimageio.core is not installed, or the package fails its validation (the validation
        summary is in the message); nothing is written then.
    """
    _require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(meta.get("frames", model.frames))
    num_classes = int(meta.get("num_classes", model.num_classes))
    norms = meta.get("norms")
    stride = int(model.max_stride)
    tile = max(stride, -(-int(tile) // stride) * stride)
    name = name or f"cemkit {meta.get('arch', model.arch)} {frames}fm segmentation"
    _check_options(weight_formats, authors)

    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        files = work / "files"
        files.mkdir()
        weights = _export_weights(model, meta, files, weight_formats, tile=tile, output=output,
                                  opset=opset, tolerance=tolerance, source=source)
        raw, y = _write_test_tensors(model, files, frames=frames, tile=tile, norms=norms,
                                     output=output)
        preprocessing, norm_text = _preprocessing(norms)
        pixel_nm = meta.get("pixel_size_nm")  # None for checkpoints without a recorded pixel size
        inp = _input_descr(files, frames=frames, stride=stride, preprocessing=preprocessing, pixel_nm=pixel_nm)
        out = _output_descr(files, meta, channels=y.shape[1], output=output, pixel_nm=pixel_nm)
        text = description or (
            f"cemkit DeepEM3D-style segmentation model ({meta.get('arch', model.arch)} encoder, "
            f"{frames} input slice(s), {num_classes if num_classes > 2 else 'binary'} classes) "
            f"for volume electron microscopy.")
        readme = _write_readme(files / "README.md", name=name, text=text, frames=frames,
                               channels=y.shape[1], out_description=out.description,
                               norm_text=norm_text, stride=stride, source=source,
                               weight_names=list(weights), tolerance=tolerance, pixel_nm=pixel_nm)
        descr = _model_descr(files, name=name, text=text, authors=authors, cite=cite,
                             licence=licence, readme=readme, tags=tags, inp=inp, out=out,
                             weights=weights)
        _save_validated(descr, path, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("wrote bioimage.io package %s", path)
    return path


def _check_options(weight_formats: Sequence[str], authors: Sequence[str]) -> None:
    """Raise ConfigError for weight formats other than torchscript/onnx, or no author."""
    unknown = set(weight_formats) - {"torchscript", "onnx"}
    if unknown or not weight_formats:
        raise ConfigError(f"bioimageio weight formats must be torchscript and/or onnx, got "
                          f"{list(weight_formats)}")
    if not authors:
        raise ConfigError("a bioimage.io package needs at least one author: set "
                          "bioimageio.authors=[\"Your Name\"]")


def _export_weights(model, meta: dict[str, Any], files: Path, weight_formats: Sequence[str], *,
                    tile: int, output: str, opset: int, tolerance: float,
                    source: str | None) -> dict[str, Any]:
    """Export (and check) the TorchScript and/or ONNX weights; their spec descriptions by format."""
    from bioimageio.spec.model import v0_5 as spec

    weights: dict[str, Any] = {}
    if "torchscript" in weight_formats:
        ts = export_torchscript(model, meta, files / "weights.pt", tile=tile, output=output,
                                tolerance=tolerance, source=source)
        weights["torchscript"] = spec.TorchscriptWeightsDescr(
            source=ts, pytorch_version=spec.Version(torch.__version__.split("+")[0]))
    if "onnx" in weight_formats:
        ox = export_onnx(model, meta, files / "weights.onnx", tile=tile, output=output,
                         opset=opset, tolerance=tolerance, source=source)
        weights["onnx"] = spec.OnnxWeightsDescr(
            source=ox, opset_version=int(opset),
            parent="torchscript" if "torchscript" in weights else None)
    return weights


def _write_test_tensors(model, files: Path, *, frames: int, tile: int, norms, output: str
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Save the raw test input, the model's test output and the cover; returns both arrays."""
    raw = _test_input(frames, tile)
    if norms is not None:
        x = (raw / 255.0 - float(norms[0])) / float(norms[1])
    else:
        x = (raw - raw.mean()) / (raw.std() + 1e-6)
    with torch.no_grad():
        y = (model.predict_proba(torch.from_numpy(x.astype(np.float32)))
             if output == "probabilities" else model(torch.from_numpy(x.astype(np.float32))))
    y = y.numpy().astype(np.float32)
    np.save(files / "test_input.npy", raw)
    np.save(files / "test_output.npy", y)
    _cover(raw[0, frames // 2], y[0, 0 if y.shape[1] == 1 else -1], files / "cover.png")
    return raw, y


def _preprocessing(norms) -> tuple[list, str]:
    """The declared input preprocessing and its description for the README."""
    from bioimageio.spec.model import v0_5 as spec

    if norms is not None:
        preprocessing = [spec.FixedZeroMeanUnitVarianceDescr(
            kwargs=spec.FixedZeroMeanUnitVarianceKwargs(
                mean=255.0 * float(norms[0]), std=255.0 * float(norms[1])))]
        norm_text = (f"(x / 255 - {float(norms[0]):.8g}) / {float(norms[1]):.8g} on 0-255 "
                     f"intensities")
    else:
        preprocessing = [spec.ZeroMeanUnitVarianceDescr()]
        norm_text = "per-image zero mean, unit variance (the checkpoint stores no norms)"
    return preprocessing, norm_text


def _space_scale(pixel_nm: float | None) -> dict[str, Any]:
    """The ``unit``/``scale`` of a y or x axis: the model's pixel size in nm when it records one."""
    return {} if pixel_nm is None else {"unit": "nanometer", "scale": float(pixel_nm)}


def _input_descr(files: Path, *, frames: int, stride: int, preprocessing: list, pixel_nm: float | None = None):
    """The input tensor: ``frames`` z-slice channels (``zm1``, ``z``, ``zp1``, ...), y and x (in nm at the
    model's pixel size when it records one)."""
    from bioimageio.spec.model import v0_5 as spec

    half = frames // 2
    channel_names = [f"z{'+' if i > half else '-' if i < half else ''}"
                     f"{abs(i - half) if i != half else ''}" for i in range(frames)]
    channel_names = [spec.Identifier(c.replace("+", "p").replace("-", "m") or "z")
                     for c in channel_names]
    return spec.InputTensorDescr(
        id=spec.TensorId("input"),
        description=f"{frames} consecutive z-slices (centre slice is segmented), raw 0-255",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=channel_names),
              spec.SpaceInputAxis(id=spec.AxisId("y"),
                                  size=spec.ParameterizedSize(min=stride, step=stride), **_space_scale(pixel_nm)),
              spec.SpaceInputAxis(id=spec.AxisId("x"),
                                  size=spec.ParameterizedSize(min=stride, step=stride), **_space_scale(pixel_nm))],
        test_tensor=spec.FileDescr(source=files / "test_input.npy"),
        preprocessing=preprocessing)


def _output_descr(files: Path, meta: dict[str, Any], *, channels: int, output: str, pixel_nm: float | None = None):
    """The output tensor: foreground or one channel per class, sized like the input."""
    from bioimageio.spec.model import v0_5 as spec

    if channels == 1:
        out_names = [spec.Identifier("foreground")]
    else:
        names = meta.get("class_names") or [f"class{i}" for i in range(channels)]
        out_names = [spec.Identifier(str(n)) for n in names]
    return spec.OutputTensorDescr(
        id=spec.TensorId("output"),
        description=("probabilities" if output == "probabilities" else "logits")
        + (" of the foreground" if channels == 1 else " per class"),
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=out_names),
              spec.SpaceOutputAxis(id=spec.AxisId("y"), size=spec.SizeReference(
                  tensor_id=spec.TensorId("input"), axis_id=spec.AxisId("y")), **_space_scale(pixel_nm)),
              spec.SpaceOutputAxis(id=spec.AxisId("x"), size=spec.SizeReference(
                  tensor_id=spec.TensorId("input"), axis_id=spec.AxisId("x")), **_space_scale(pixel_nm))],
        test_tensor=spec.FileDescr(source=files / "test_output.npy"))


def _write_readme(readme: Path, *, name: str, text: str, frames: int, channels: int,
                  out_description: str, norm_text: str, stride: int, source: str | None,
                  weight_names: list[str], tolerance: float, pixel_nm: float | None = None) -> Path:
    """Write the package README (input, output, normalisation, pixel size, validation) and return its path."""
    scale = ("the training data's pixel size is not recorded" if pixel_nm is None else
             f"trained at {float(pixel_nm):g} nm per pixel (y, x): resample other data to it")
    readme.write_text(
        f"# {name}\n\n{text}\n\n"
        f"* Input: `(batch, {frames}, y, x)` float32, {frames} consecutive z-slices of raw 0-255 "
        f"intensities; the model segments the centre slice. Normalisation (declared as "
        f"preprocessing): {norm_text}.\n"
        f"* Output: `(batch, {channels}, y, x)` {out_description}.\n"
        f"* y and x: multiples of {stride} (other sizes work too: the model pads and crops); {scale}.\n"
        f"* Exported by cemkit from `{Path(source).name if source else 'a checkpoint'}`; "
        f"{' and '.join(weight_names)} weights reproduce PyTorch within {tolerance:g}.\n\n"
        f"## Validation\n\nExported weights are checked against the PyTorch model on random "
        f"inputs of other sizes than the test tile (max absolute difference <= {tolerance:g}) "
        f"and the package is validated with `bioimageio.core.test_model`. Segmentation quality "
        f"should be measured on your own labelled volumes with `cemkit evaluate`.\n",
        encoding="utf-8")
    return readme


def _model_descr(files: Path, *, name: str, text: str, authors: Sequence[str],
                 cite: Sequence[dict[str, str]], licence: str, readme: Path, tags: Sequence[str],
                 inp, out, weights: dict[str, Any]):
    """The bioimage.io model description (rdf) of the package's files."""
    from bioimageio.spec.model import v0_5 as spec

    cites = [spec.CiteEntry(**c) for c in (cite or [CEM500K_CITATION])]
    return spec.ModelDescr(
        name=name, description=text,
        authors=[spec.Author(name=a) for a in authors],
        cite=cites, license=licence,
        documentation=spec.FileDescr(source=readme),
        covers=[spec.FileDescr(source=files / "cover.png")],
        tags=list(tags) or ["electron-microscopy", "segmentation", "2d", "cemkit", "pytorch",
                            "onnx"],
        inputs=[inp], outputs=[out],
        weights=spec.WeightsDescr(**weights),
    )


def _save_validated(descr, path: Path, source: str | None) -> None:
    """Save the package to ``path`` (zip or folder) once ``test_model`` passes on it."""
    from bioimageio.core import test_model
    from bioimageio.spec import (
        save_bioimageio_package,
        save_bioimageio_package_as_folder,
    )

    # the package is staged next to ``path`` and renamed into place once validated (a
    # package folder replaces an existing folder); a failed validation deletes it
    with atomic_path(path, keep_suffix=True) as staged:
        if path.suffix == ".zip":
            save_bioimageio_package(descr, output_path=staged)
        else:
            save_bioimageio_package_as_folder(descr, output_path=staged)
        summary = test_model(staged if path.suffix == ".zip" else staged / "rdf.yaml",
                             devices=["cpu"])
        if summary.status != "passed":
            raise ExportCheckError(f"the bioimage.io package for {source or 'the model'} failed "
                                   f"validation:\n{summary.format()}")
        logger.info("bioimage.io package validated by bioimageio.core %s (status %s)",
                    _version(), summary.status)


def _version() -> str:
    import bioimageio.core

    return getattr(bioimageio.core, "__version__", "?")
