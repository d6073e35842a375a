"""Novelty-monitor metrics, as in Outside the Box.

On known inputs (classes the model was trained on) with true labels:

- ``detection_rate``       = misclassified and rejected / misclassified
- ``false_warning_rate``   = correct and rejected / correct
- ``acceptance_rate``      = correct and accepted / correct  (= 1 - false_warning_rate)

On novel inputs (classes the model never saw):

- ``novelty_detection_rate`` = rejected / novel
- ``auroc``: area under the ROC curve of the graded score (the monitor's ``novelty_score``) separating
  novel inputs (positives) from correctly classified known inputs (negatives);
- ``auroc_misclassified``: the same for misclassified (positive) vs correct known inputs.

A rate whose denominator is 0 (e.g. no misclassified input) is ``None``, and so is an AUROC
when either group is empty; JSON writes these as ``null``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from boxhack.errors import BoxhackError, NotFittedError
from boxhack.models.layers import collect
from boxhack.monitor.base import MonitorLike
from boxhack.monitor.compat import check_compatible


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _auroc(negative_scores: np.ndarray, positive_scores: np.ndarray) -> float | None:
    if len(negative_scores) == 0 or len(positive_scores) == 0:
        return None
    from sklearn.metrics import roc_auc_score  # ~1 s to import; only AUROCs need it

    scores = np.concatenate([negative_scores, positive_scores])
    # inf (a class without boxes) ranks above every finite score; keep sklearn happy
    finite = scores[np.isfinite(scores)]
    cap = (finite.max() if finite.size else 0.0) + 1.0
    scores = np.where(np.isfinite(scores), scores, cap)
    truth = np.concatenate([np.zeros(len(negative_scores)), np.ones(len(positive_scores))])
    return float(roc_auc_score(truth, scores))


def novelty_metrics(
    known_pred: np.ndarray,
    known_labels: np.ndarray,
    known_accepted: np.ndarray,
    known_score: np.ndarray | None = None,
    novel_accepted: np.ndarray | None = None,
    novel_score: np.ndarray | None = None,
) -> dict:
    """The metrics from precomputed predictions, decisions and scores (see module doc)."""
    known_pred = np.asarray(known_pred).reshape(-1)
    known_labels = np.asarray(known_labels).reshape(-1)
    acc = np.asarray(known_accepted, dtype=bool).reshape(-1)
    if not (len(known_pred) == len(known_labels) == len(acc)):
        raise BoxhackError(
            f"known predictions, labels and decisions differ in length "
            f"({len(known_pred)}, {len(known_labels)}, {len(acc)})"
        )
    correct = known_pred == known_labels
    n_correct = int(correct.sum())
    n_mis = int((~correct).sum())
    correct_accepted = int((correct & acc).sum())
    correct_rejected = n_correct - correct_accepted
    mis_rejected = int((~correct & ~acc).sum())
    out: dict = {
        "n_known": len(correct),
        "n_correct": n_correct,
        "n_misclassified": n_mis,
        "accuracy": _rate(n_correct, len(correct)),
        "correct_accepted": correct_accepted,
        "correct_rejected": correct_rejected,
        "misclassified_rejected": mis_rejected,
        "misclassified_accepted": n_mis - mis_rejected,
        "acceptance_rate": _rate(correct_accepted, n_correct),
        "false_warning_rate": _rate(correct_rejected, n_correct),
        "detection_rate": _rate(mis_rejected, n_mis),
        "known_rejection_rate": _rate(int((~acc).sum()), len(acc)),
        "auroc_misclassified": None,
        "n_novel": 0,
        "novel_rejected": 0,
        "novelty_detection_rate": None,
        "auroc": None,
    }
    if known_score is not None:
        ks = np.asarray(known_score, dtype=np.float64).reshape(-1)
        out["auroc_misclassified"] = _auroc(ks[correct], ks[~correct])
    if novel_accepted is not None:
        nacc = np.asarray(novel_accepted, dtype=bool).reshape(-1)
        out["n_novel"] = len(nacc)
        out["novel_rejected"] = int((~nacc).sum())
        out["novelty_detection_rate"] = _rate(out["novel_rejected"], len(nacc))
        if known_score is not None and novel_score is not None:
            ks = np.asarray(known_score, dtype=np.float64).reshape(-1)
            out["auroc"] = _auroc(ks[correct], np.asarray(novel_score, np.float64).reshape(-1))
    return out


def evaluate_novelty(
    monitor: MonitorLike,
    model: nn.Module,
    known_inputs: Any,
    known_labels: Any,
    novel_inputs: Any = None,
    *,
    batch_size: int = 1024,
) -> dict:
    """Run ``model`` + ``monitor`` on known (labelled) and optional novel inputs; returns the
    metrics of :func:`novelty_metrics` (features are computed once per input set). A monitor
    fitted on another model is refused first (:func:`boxhack.monitor.check_compatible`)."""
    if not monitor.is_fitted:
        raise NotFittedError(f"{type(monitor).__name__} is not fitted yet; fit or load it first")
    labels = np.asarray(
        known_labels.detach().cpu().numpy() if hasattr(known_labels, "detach") else known_labels
    ).reshape(-1)
    if len(labels) != len(known_inputs):
        raise BoxhackError(f"got {len(known_inputs)} known inputs but {len(labels)} labels")
    if len(labels) == 0:
        raise BoxhackError("no known inputs to evaluate on")
    check_compatible(monitor, model, example=known_inputs[:1])
    names = list(monitor.layers_)  # check_compatible found each of them in the model
    pred, feats = collect(model, names, known_inputs, batch_size=batch_size)
    accepted = monitor.accepts_features(feats, pred)
    score = monitor.novelty_score(feats, pred)
    n_acc = n_score = None
    if novel_inputs is not None and len(novel_inputs) > 0:
        npred, nfeats = collect(model, names, novel_inputs, batch_size=batch_size)
        n_acc = monitor.accepts_features(nfeats, npred)
        n_score = monitor.novelty_score(nfeats, npred)
    return novelty_metrics(pred, labels, accepted, score, n_acc, n_score)


__all__ = ["evaluate_novelty", "novelty_metrics"]
