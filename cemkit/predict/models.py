"""The models a prediction runs: checkpoint specs -> files -> loaded segmenters with their metadata."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from cemkit.errors import InputError
from cemkit.io.pixel_size import check_pixel_size
from cemkit.models.checkpoint import checkpoint_in, load_segmenter
from cemkit.models.references import is_reference, resolve_reference

logger = logging.getLogger(__name__)

FRAME_FOLDERS = ("1fm", "3fm", "5fm")


@dataclass
class Segmenter:
    """A segmentation model as the predictor uses it.

    ``module(x)`` maps normalised ``(B, frames, H, W)`` input to logits ``(B, C, H, W)``; when it has
    ``predict_proba`` that gives the probabilities, otherwise a 1-channel output goes through a
    sigmoid and a multi-channel output through a softmax. ``pixel_size_nm`` is the yx pixel size the
    model was trained at (None: unknown; the input is then fed at its own pixel size).
    """

    module: torch.nn.Module
    frames: int = 1
    norms: tuple[float, float] = (0.0, 1.0)
    name: str = "model"
    arch: str | None = None
    pixel_size_nm: float | None = None

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.module, "predict_proba"):
            return self.module.predict_proba(x)
        logits = self.module(x)
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def describe(self) -> dict:
        return {"name": self.name, "frames": self.frames, "norms": list(self.norms), "arch": self.arch,
                "pixel_size_nm": self.pixel_size_nm}


def _as_list(spec) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, (str, Path)):
        return [s.strip() for s in str(spec).split(",") if s.strip()]
    items: list[str] = []
    for s in spec:
        items += _as_list(s)
    return items


def resolve_checkpoints(spec: str | Iterable[str]) -> list[Path]:
    """Checkpoint files named by ``spec``.

    ``spec`` is one entry or several (a list or a comma-separated string). An entry is a checkpoint
    file; a finetune run folder holding ``1fm/``, ``3fm/``, ``5fm/`` (each contributes its
    ``best.ckpt``, else ``last.ckpt``); a folder holding ``best.ckpt``/``last.ckpt``; or
    ``zoo:NAME`` (downloaded/cached by the model zoo, see :mod:`cemkit.models.references`).
    """
    entries = _as_list(spec)
    if not entries:
        raise InputError("predict: no checkpoint given; pass checkpoint=PATH (file, finetune folder or zoo:NAME)")
    paths: list[Path] = []
    for entry in entries:
        if is_reference(entry):
            paths += resolve_checkpoints(str(resolve_reference(entry)))
            continue
        p = Path(entry).expanduser()
        if p.is_file():
            paths.append(p)
            continue
        if not p.is_dir():
            raise InputError(f"checkpoint {p}: no such file or folder")
        found = [c for c in (checkpoint_in(p / f) for f in FRAME_FOLDERS) if c is not None]
        if not found:
            direct = checkpoint_in(p)
            found = [direct] if direct else sorted(p.glob("*/best.ckpt"))
        if not found:
            raise InputError(f"checkpoint folder {p}: holds no best.ckpt/last.ckpt, neither directly "
                             f"nor in {'/'.join(FRAME_FOLDERS)}/")
        paths += found
    return paths


def recorded_pixel_size(meta: dict, path: Path | str) -> float | None:
    """The pixel size (nm) a checkpoint's ``meta`` records, checked; None for checkpoints without one.

    Raises
    ------
    InputError
        A recorded value that is not a plausible pixel size (names the file).
    """
    value = meta.get("pixel_size_nm")  # absent in checkpoints written before pixel sizes were recorded
    if value is None:
        return None
    return check_pixel_size(value, f"checkpoint {path} (its recorded pixel_size_nm)", input_error=True)


def load_segmenters(paths: list[Path], device: torch.device | str = "cpu") -> list[Segmenter]:
    """Load checkpoints with :func:`cemkit.models.checkpoint.load_segmenter` onto ``device``."""
    models = []
    for path in paths:
        try:
            module, meta = load_segmenter(path, map_location="cpu")
        except InputError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise InputError(f"checkpoint {path}: cannot be loaded as a cemkit segmenter ({exc})") from exc
        module = module.to(device).eval()
        norms = tuple(float(v) for v in (meta.get("norms") or (0.0, 1.0)))
        name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        models.append(Segmenter(module, int(meta.get("frames", 1)), norms, name, meta.get("arch"),
                                recorded_pixel_size(meta, path)))
        nm = models[-1].pixel_size_nm
        logger.info("loaded %s (%s, %d frame(s), trained at %s)", path, models[-1].arch, models[-1].frames,
                    "an unknown pixel size" if nm is None else f"{nm:g} nm")
    return models
