"""Run a command as on an AVX2-only CPU (no AVX-512, no bf16 units, no VNNI or AMX), where software decides.

    .venv/bin/python scripts/as_avx2_cpu.py make test
    .venv/bin/python scripts/as_avx2_cpu.py .venv/bin/cemkit demo

Sets :data:`cemkit.hardware.AVX2_ONLY_ENV`: numpy's OpenBLAS, torch's own kernels, MKL and oneDNN at AVX2,
and ``CEMKIT_CPU_FLAGS=avx2`` so that cemkit chooses as for such a CPU (float32 instead of bf16, the float32
dHash path). Code without SIMD dispatch (PIL, zlib) runs as it does here. For timing, not for correctness.
"""

from __future__ import annotations

import os
import sys

from cemkit.hardware import AVX2_ONLY_ENV

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("as an AVX2-only CPU: " + " ".join(f"{k}={v}" for k, v in AVX2_ONLY_ENV.items()), file=sys.stderr)
    os.execvpe(sys.argv[1], sys.argv[1:], {**os.environ, **AVX2_ONLY_ENV})
