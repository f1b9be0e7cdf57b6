"""``cemkit study``: a label-efficiency study (config: conf/study.yaml, guide: docs/study.md).

    cemkit study data.images=DIR data.labels=DIR output=DIR study.test_slices=14-19 study.inits=none,zoo:NAME
"""

from __future__ import annotations

from omegaconf import DictConfig

from cemkit.study.pipeline import run_study


def run(cfg: DictConfig) -> dict:
    """Stage entry point (see :mod:`cemkit.cli.hydra_app`)."""
    result = run_study(cfg)
    ok = sum(r.get("status") == "ok" for r in result["rows"])
    lines = [f"cemkit study -> {result['output']}: {ok} of {len(result['rows'])} runs finished",
             f"  table  {result['csv']}", f"  report {result['report']}"]
    if result.get("folds_csv"):
        lines.append(f"  folds  {result['folds_csv']}")
    for init, error in result["failed_inits"].items():
        lines.append(f"  FAILED init {init}: {error}")
    print("\n".join(lines))
    return result
