"""Analyses of what model structure does to backdoors.

* :func:`scan_skips` - BA / ASR as each skip connection alone is suppressed by a decay factor gamma
  (Yang et al., ICASSP 2023, Figure 1), with :func:`critical_scores` to rank skips;
* :func:`gradient_suppression_experiment` - train with every skip scaled by gamma (same paper,
  section 2, training stage).
"""

from backdoorkit.analysis.gradient_suppression import (
    TRAINING_GAMMAS,
    GradientSuppression,
    gradient_suppression_experiment,
)
from backdoorkit.analysis.skip_scan import (
    DEFAULT_GAMMAS,
    CriticalScore,
    SkipScan,
    critical_scores,
    scan_skips,
)

__all__ = [
    "DEFAULT_GAMMAS",
    "TRAINING_GAMMAS",
    "CriticalScore",
    "GradientSuppression",
    "SkipScan",
    "critical_scores",
    "gradient_suppression_experiment",
    "scan_skips",
]
