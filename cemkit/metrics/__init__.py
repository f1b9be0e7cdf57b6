"""Pure segmentation metrics (numpy in, python floats out).

- :mod:`cemkit.metrics.pixel`: pooled pixel/voxel metrics (IoU, Dice/F1, precision, recall,
  accuracy, specificity, confusion matrix, mean IoU) and :func:`per_image` averaging (CEM500K 2D
  protocol) -- every other function pools over the whole array it is given.
- :mod:`cemkit.metrics.rand`: foreground-restricted V_rand / V_info of the ISBI 2012 challenge,
  with optional border thinning and connected-component labelling of binary masks.
- :mod:`cemkit.metrics.objects`: one-to-one instance matching and object precision/recall/F1.
- :mod:`cemkit.metrics.bootstrap`: a paired bootstrap over slices for the difference in IoU of two
  predictions of one volume.

Everything is importable from ``cemkit.metrics`` directly.
"""

from cemkit.metrics.bootstrap import IoUDifference, iou_difference_interval, pooled_iou
from cemkit.metrics.objects import InstanceMatches, match_instances, object_scores
from cemkit.metrics.pixel import (
    BinaryCounts,
    accuracy,
    binary_counts,
    binary_metrics,
    binary_metrics_from_counts,
    confusion_matrix,
    dice,
    f1,
    foreground_iou,
    iou_per_class,
    mean_iou,
    per_image,
    precision,
    recall,
    specificity,
)
from cemkit.metrics.rand import (
    contingency_table,
    info_scores,
    label_components,
    rand_scores,
    thin_borders,
)

__all__ = [
    "BinaryCounts",
    "InstanceMatches",
    "IoUDifference",
    "accuracy",
    "binary_counts",
    "binary_metrics",
    "binary_metrics_from_counts",
    "confusion_matrix",
    "contingency_table",
    "dice",
    "f1",
    "foreground_iou",
    "info_scores",
    "iou_difference_interval",
    "iou_per_class",
    "label_components",
    "match_instances",
    "mean_iou",
    "object_scores",
    "per_image",
    "pooled_iou",
    "precision",
    "rand_scores",
    "recall",
    "specificity",
    "thin_borders",
]
