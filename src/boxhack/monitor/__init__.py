"""Outside-the-Box novelty monitors: per-class boxes over a layer's vectors.

``BoxMonitor`` (scikit-learn style) fits on a model or on precomputed features, decides
accept/reject exactly in float32, gives a graded novelty score, and a differentiable margin
(``margin``, ``forward_margin``) whose sign is the decision — the attacks build on it.
"""

from boxhack.monitor.box import FORMAT, FORMAT_VERSION, BoxMonitor, widen
from boxhack.monitor.clustering import Clustering, cluster_class
from boxhack.monitor.compat import check_compatible, state_sha256
from boxhack.monitor.io import load_monitor, save_monitor

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BoxMonitor",
    "Clustering",
    "check_compatible",
    "cluster_class",
    "load_monitor",
    "save_monitor",
    "state_sha256",
    "widen",
]
