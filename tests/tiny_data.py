"""Small synthetic labelled volumes written as tif stacks, shared by the finetune, DDP and study tests."""
from pathlib import Path

import numpy as np

from cemkit.data.synthetic import make_volume
from cemkit.io import write_tif_stack


def labelled_tif_pair(folder: Path, names: tuple[str, str] = ("images.tif", "labels.tif"),
                      **volume_kwargs) -> tuple[Path, Path]:
    """Write ``make_volume(**volume_kwargs)``'s image and its mitochondria (0/255) as two tif stacks."""
    sv = make_volume(**volume_kwargs)
    return (write_tif_stack(folder / names[0], sv.image),
            write_tif_stack(folder / names[1], (sv.mito * 255).astype(np.uint8)))
