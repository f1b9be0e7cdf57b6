"""Linear probe: did a pretrained encoder learn features that separate mitochondria?

Frozen encoder features (strides 4 and 8, the stride-8 map upsampled and concatenated) of the CDeep3M
sample are standardised, and a per-pixel logistic regression is fitted on slices 010-019 at 1/4 resolution;
its IoU is reported on slices 020-021 (validation slices: the test slices 024-029 are never used here).
A random-init encoder of the same architecture is the baseline. Run from the project root:

    python scripts/probe_encoder.py none outputs/pretrain/encoder.pth [--arch resnet18]

Prints one line per encoder: ``probe <name>: val IoU 0.xxx (train IoU 0.xxx)``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cemkit.models.encoders import create_encoder, load_encoder_weights, read_encoder_weights

log = logging.getLogger("probe_encoder")
DATA = Path("../shared/data/cdeep3m_mito/train")
TRAIN, VAL = range(10, 20), range(20, 22)


def load_slices(indices) -> tuple[np.ndarray, np.ndarray]:
    """Images (float in [0, 1]) and binary labels of CDeep3M slices ``indices``."""
    imgs = [np.asarray(Image.open(DATA / "images" / f"images.{i:03d}.png"), np.float32) / 255 for i in indices]
    labs = [np.asarray(Image.open(DATA / "labels" / f"mitos_3D.{i:03d}.png")) > 0 for i in indices]
    return np.stack(imgs), np.stack(labs)


def encoder_features(source: str, arch: str, images: np.ndarray, seed: int = 0) -> torch.Tensor:
    """``(N, C, H/4, W/4)`` features of the stride-4 and stride-8 stages of a frozen encoder."""
    torch.manual_seed(seed)
    model = create_encoder(arch, in_chans=1, features_only=True, out_indices=(1, 2))
    mean, std = float(images.mean()), float(images.std())
    if source != "none":
        weights = read_encoder_weights(source)
        load_encoder_weights(model, weights)
        if weights.norms:
            mean, std = weights.norms
    model.eval()
    out = []
    with torch.no_grad():
        for img in images:
            x = (torch.from_numpy(img)[None, None] - mean) / std
            f4, f8 = model(x)
            out.append(torch.cat([f4, F.interpolate(f8, size=f4.shape[-2:], mode="bilinear")], 1)[0])
    return torch.stack(out)


def quarter_labels(labels: np.ndarray) -> torch.Tensor:
    """Labels pooled to 1/4 resolution: a pixel is foreground when most of its 4 x 4 block is."""
    return F.avg_pool2d(torch.from_numpy(labels).float()[:, None], 4)[:, 0] > 0.5


def fit_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> torch.nn.Linear:
    """Logistic regression on standardised features (full-batch L-BFGS, class-balanced)."""
    probe = torch.nn.Linear(x.shape[1], 1)
    pos = y.float().mean().clamp(1e-3, 1 - 1e-3)
    weight = torch.where(y, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(probe(x)[:, 0], y.float(), weight=weight)
        loss = loss + 1e-4 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def iou(pred: torch.Tensor, y: torch.Tensor) -> float:
    inter = (pred & y).sum().item()
    union = (pred | y).sum().item()
    return inter / union if union else 1.0


def probe(source: str, arch: str, samples: int = 200_000) -> tuple[float, float]:
    """(validation IoU, training IoU) of the linear probe on ``source``'s features."""
    (tr_img, tr_lab), (va_img, va_lab) = load_slices(TRAIN), load_slices(VAL)
    ftr, fva = encoder_features(source, arch, tr_img), encoder_features(source, arch, va_img)
    c = ftr.shape[1]
    xtr, xva = ftr.permute(0, 2, 3, 1).reshape(-1, c), fva.permute(0, 2, 3, 1).reshape(-1, c)
    ytr, yva = quarter_labels(tr_lab).reshape(-1), quarter_labels(va_lab).reshape(-1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    pick = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:samples]
    lin = fit_probe(xtr[pick], ytr[pick])
    with torch.no_grad():
        return iou(lin(xva)[:, 0] > 0, yva), iou(lin(xtr[pick])[:, 0] > 0, ytr[pick])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="+", help="'none' (random init) or encoder files")
    parser.add_argument("--arch", default="resnet18")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for source in args.encoders:
        val, train = probe(source, args.arch)
        print(f"probe {source}: val IoU {val:.3f} (train IoU {train:.3f})")


if __name__ == "__main__":
    main()
