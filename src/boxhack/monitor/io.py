"""Monitor files: one ``.npz`` holding the box arrays plus a JSON metadata string.

Layout (format ``boxhack-monitor``, version 1), read with ``allow_pickle=False``:

- ``meta``: a 0-d unicode array with JSON ``{"format", "format_version", "params", "layers",
  "dims", "n_boxes", "n_classes", "metadata"}`` (``metadata`` is free-form; it records the
  model the monitor was fitted on: ``model_sha256``, the weights-file hash of a boxhack model
  directory, and ``model_state_sha256``, a hash of the model's ``state_dict``);
- ``n_fit``: int64 (n_classes,) training vectors used per class;
- per monitored layer i (in ``layers`` order): ``tight_lo_i``, ``tight_hi_i``, ``lo_i``, ``hi_i``
  float32 (boxes, d); ``box_class_i`` int64 (boxes,) sorted; ``box_count_i`` int64 (boxes,);
  ``n_clusters_i`` int64 (n_classes,).

``load`` checks the format, version, every header field's type, every shape and dtype, that all
bounds are finite, that ``n_fit`` holds non-negative counts that agree with the boxes, that the
widened boxes match the stored tolerance parameters, and reports anything wrong as a
``BoxhackError``. Whether a monitor fits a given model is :func:`boxhack.monitor.check_compatible`.
"""

from __future__ import annotations

import os
from pathlib import Path

from boxhack.monitor.box import FORMAT, FORMAT_VERSION, BoxMonitor


def save_monitor(monitor: BoxMonitor, path: str | os.PathLike) -> Path:
    """Write ``monitor`` to ``path`` exactly (no suffix is appended); returns the path."""
    return monitor.save(path)


def load_monitor(path: str | os.PathLike) -> BoxMonitor:
    """Read a monitor written by :func:`save_monitor`."""
    return BoxMonitor.load(path)


__all__ = ["FORMAT", "FORMAT_VERSION", "load_monitor", "save_monitor"]
