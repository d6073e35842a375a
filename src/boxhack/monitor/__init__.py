"""Abstraction-based novelty monitors: per-class sets over a layer's vectors.

``BoxMonitor`` (scikit-learn style) fits on a model or on precomputed features, decides
accept/reject exactly in float32, gives a graded novelty score, and a differentiable margin
(``margin``, ``forward_margin``) whose sign is the decision — the attacks build on it.

The abstraction family on the monitor protocol (:mod:`boxhack.monitor.base`):
``MeanBallMonitor`` ("ball"), ``ZoneMonitor`` ("zone"), ``OctagonMonitor`` ("octagon"),
``PatternMonitor`` ("pattern"), ``ConvexHullMonitor`` ("hull") and ``CompositeMonitor``
("composite"); :func:`boxhack.monitor.registry.load_monitor` reads any of their files.
"""

from boxhack.monitor.ball import MeanBallMonitor
from boxhack.monitor.base import ClusteredMonitor, Monitor
from boxhack.monitor.box import FORMAT, FORMAT_VERSION, BoxMonitor, widen
from boxhack.monitor.clustering import Clustering, cluster_class
from boxhack.monitor.compat import check_compatible, state_sha256
from boxhack.monitor.composite import CompositeMonitor
from boxhack.monitor.hull import ConvexHullMonitor
from boxhack.monitor.io import load_monitor, save_monitor
from boxhack.monitor.pattern import PatternMonitor
from boxhack.monitor.registry import MONITORS, monitor_class
from boxhack.monitor.zone import OctagonMonitor, ZoneMonitor

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MONITORS",
    "BoxMonitor",
    "ClusteredMonitor",
    "Clustering",
    "CompositeMonitor",
    "ConvexHullMonitor",
    "MeanBallMonitor",
    "Monitor",
    "OctagonMonitor",
    "PatternMonitor",
    "ZoneMonitor",
    "check_compatible",
    "cluster_class",
    "load_monitor",
    "monitor_class",
    "save_monitor",
    "state_sha256",
    "widen",
]
