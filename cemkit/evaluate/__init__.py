"""``cemkit evaluate``: metrics of a prediction against labels (see docs/evaluate.md).

- :mod:`cemkit.io.predictions`: what a prediction path holds (predict folder, probabilities,
  mask, instance labels) and how it becomes a foreground mask.
- :mod:`cemkit.evaluate.evaluation`: streaming slab-by-slab evaluation and the threshold sweep.
- :mod:`cemkit.evaluate.report`: the text table and the JSON file.
- :mod:`cemkit.evaluate.command`: the Hydra stage command.
"""

from cemkit.evaluate.evaluation import Settings, evaluate
from cemkit.io.predictions import Prediction, open_prediction

__all__ = ["Prediction", "Settings", "evaluate", "open_prediction"]
