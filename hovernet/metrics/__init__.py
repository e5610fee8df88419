"""Evaluation metrics for nucleus instance segmentation and classification (pure NumPy/SciPy).

Instance maps are 2-D integer arrays (0 = background, any positive ids); type maps are 2-D
arrays of class ids; centroids are N x 2 [x, y]. See docs/metrics.md for definitions, the
values returned for empty inputs and the differences from other packages.
"""

from hovernet.metrics.counts import CONIC_COUNT_CROP, class_counts, count_r2
from hovernet.metrics.detection import (
    DEFAULT_RADIUS_PX,
    TYPE_F1_WEIGHTS,
    TypeStats,
    detection_stats,
    instance_centroids,
    pair_coordinates,
    radius_pixels,
    type_stats,
)
from hovernet.metrics.instance import (
    InstanceStats,
    aji,
    aji_plus,
    dice,
    instance_stats,
    panoptic_quality,
    pool_instance_stats,
)
from hovernet.metrics.multiclass import (
    CONIC_CLASSES,
    PANNUKE_CLASSES,
    PQCounts,
    binarize_channels,
    channels_to_maps,
    class_channels,
    conic_pq_plus,
    conic_summary,
    mpq,
    pannuke_folds,
    pannuke_image,
    pannuke_pq,
    pannuke_summary,
    per_class_pq,
    pq_counts,
)
from hovernet.metrics.overlap import Overlap, as_label_map, overlap

__all__ = [
    "CONIC_CLASSES",
    "CONIC_COUNT_CROP",
    "DEFAULT_RADIUS_PX",
    "InstanceStats",
    "Overlap",
    "PANNUKE_CLASSES",
    "PQCounts",
    "TYPE_F1_WEIGHTS",
    "TypeStats",
    "aji",
    "aji_plus",
    "as_label_map",
    "binarize_channels",
    "channels_to_maps",
    "class_channels",
    "class_counts",
    "conic_pq_plus",
    "conic_summary",
    "count_r2",
    "detection_stats",
    "dice",
    "instance_centroids",
    "instance_stats",
    "mpq",
    "overlap",
    "pair_coordinates",
    "pannuke_folds",
    "pannuke_image",
    "pannuke_pq",
    "pannuke_summary",
    "panoptic_quality",
    "per_class_pq",
    "pool_instance_stats",
    "pq_counts",
    "radius_pixels",
    "type_stats",
]
