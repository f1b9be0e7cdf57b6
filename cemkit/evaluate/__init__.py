"""``cemkit evaluate``: metrics of a prediction against labels (see docs/evaluate.md).

- :mod:`cemkit.evaluate.evaluation`: streaming slab-by-slab evaluation and the threshold sweep.
- :mod:`cemkit.evaluate.report`: the text table and the JSON file.
- :mod:`cemkit.evaluate.command`: the Hydra stage command.

What a prediction path holds (predict folder, probabilities, mask, instance labels) and how it
becomes a foreground mask is :mod:`cemkit.io.predictions`, shared with ``cemkit predict``.
"""

from cemkit.evaluate.evaluation import Settings, evaluate
from cemkit.io.predictions import Prediction, open_prediction

__all__ = ["Prediction", "Settings", "evaluate", "open_prediction"]
