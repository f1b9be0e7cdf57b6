"""Load triton with its own LLVM before torch does, inside napari.

napari's OpenGL canvas on Mesa (llvmpipe: Xvfb, VMs, remote desktops) loads Mesa's LLVM into the process
with global symbols. torch's CUDA build imports triton (``torch._dynamo`` does, from torchvision) and
libtriton carries another LLVM: loaded after Mesa's, it binds to Mesa's symbols and the process crashes
with a segmentation fault on the first Predict. Loaded with ``RTLD_DEEPBIND`` it uses its own.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def load_triton_apart() -> bool:
    """Import triton with ``RTLD_DEEPBIND`` if it is installed and not yet imported; True when it did."""
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None or "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return False
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    finally:
        sys.setdlopenflags(flags)
    return True
