"""Abstraction-based novelty monitors: per-class sets over a layer's vectors.

Every monitor implements one protocol (:mod:`boxhack.monitor.base`, typed as
:class:`MonitorLike`): fit on a model's layers or on precomputed features, an exact
accept/reject decision in float32, a graded novelty score, a differentiable margin whose sign is
the decision (``margin``, ``forward_margin``; the attacks build on it), and a safe, versioned
file. The abstractions: ``BoxMonitor`` ("box"), ``MeanBallMonitor`` ("ball"), ``ZoneMonitor``
("zone"), ``OctagonMonitor`` ("octagon"), ``PatternMonitor`` ("pattern"),
``ConvexHullMonitor`` ("hull") and ``CompositeMonitor`` ("composite");
:func:`load_monitor` reads any of their files, :func:`monitor_class` maps a name to its class,
:func:`build_monitor` makes one from a name (``"zone"``, ``"box+pattern"``) and parameters.
"""

from boxhack.monitor.ball import MeanBallMonitor
from boxhack.monitor.base import ClusteredMonitor, Monitor, MonitorLike, state_sha256
from boxhack.monitor.box import BoxMonitor
from boxhack.monitor.clustering import Clustering, cluster_class
from boxhack.monitor.compat import check_compatible
from boxhack.monitor.composite import CompositeMonitor
from boxhack.monitor.hull import ConvexHullMonitor
from boxhack.monitor.io import BOX_FORMAT_VERSION, FORMAT, FORMAT_VERSION, save_monitor
from boxhack.monitor.pattern import PatternMonitor
from boxhack.monitor.registry import (
    MONITORS,
    abstraction_params,
    build_monitor,
    load_monitor,
    monitor_class,
    register,
)
from boxhack.monitor.zone import OctagonMonitor, ZoneMonitor

__all__ = [
    "BOX_FORMAT_VERSION",
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
    "MonitorLike",
    "OctagonMonitor",
    "PatternMonitor",
    "ZoneMonitor",
    "abstraction_params",
    "build_monitor",
    "check_compatible",
    "cluster_class",
    "load_monitor",
    "monitor_class",
    "register",
    "save_monitor",
    "state_sha256",
]
