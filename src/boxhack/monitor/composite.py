"""Composite monitor: several abstractions on the same layers, accepted only if all accept.

``CompositeMonitor([ZoneMonitor(n_clusters=3), PatternMonitor(gamma=1)])`` fits every member
on the same (correctly classified, class-grouped) layer vectors and combines them:

- ``accepts_features``: all members accept (a later member only sees the rows the earlier ones
  accepted, so put cheap members first and the convex hull last);
- ``decision_function`` and ``margin``: the minimum over members (each is ``>= 0`` iff that
  member accepts, so the minimum is ``>= 0`` iff all do);
- ``novelty_score``: the maximum over members. Every member's score is already a
  dimensionless "how far outside, relative to the set's size" (box/zone/octagon: distance /
  half-diagonal; ball: (distance - r) / r; hull: L-inf distance / half-width; pattern: excess
  Hamming distance / d), and all are 0 exactly when accepted, so no further normalisation is
  applied: a member whose scores run larger dominates the ranking, which is documented rather
  than hidden behind a calibration the file would have to carry.

The composite's ``tolerance``, ``relative_tolerance``, ``only_correct`` and ``n_classes``
apply to every member (``with_tolerance`` changes them all); each member keeps its own other
parameters (clusters, gamma, ...). Files hold every member's state under ``m<i>.``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from boxhack.errors import BoxhackError
from boxhack.monitor.base import Monitor, jsonable_params
from boxhack.monitor.registry import monitor_class, register

__all__ = ["CompositeMonitor"]

_SHARED = ("tolerance", "relative_tolerance", "only_correct", "n_classes")


def _spec(member: Any) -> dict[str, Any]:
    if isinstance(member, Monitor):
        params = {k: v for k, v in member.get_params().items() if k not in _SHARED}
        return {"abstraction": member.abstraction, "params": jsonable_params(params)}
    if isinstance(member, Mapping) and isinstance(member.get("abstraction"), str):
        params = dict(member.get("params") or {})
        return {"abstraction": member["abstraction"],
                "params": {k: v for k, v in params.items() if k not in _SHARED}}
    raise BoxhackError(
        f"a composite member must be a monitor (e.g. ZoneMonitor()) or a dict "
        f"{{'abstraction': name, 'params': {{...}}}}, got {type(member).__name__}"
    )


@register
class CompositeMonitor(Monitor):
    """Several abstractions at once: accepted only if every member accepts."""

    abstraction: ClassVar[str] = "composite"
    PARAMS: ClassVar[tuple[str, ...]] = Monitor.PARAMS + ("members",)
    uses_preactivation: ClassVar[bool] = True  # per instance: any member uses them

    def __init__(self, members: Sequence[Any] = (), **params: Any) -> None:
        super().__init__(**params)
        self.members = members

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        out = super().get_params(deep)
        try:
            out["members"] = [_spec(m) for m in self.members]
        except (BoxhackError, TypeError):
            out["members"] = self.members
        return out

    def _validate_params(self) -> None:
        super()._validate_params()
        members = self.members
        if isinstance(members, (str, bytes, Mapping)) or not isinstance(members, Sequence) \
                or len(members) == 0:
            raise BoxhackError("CompositeMonitor parameter members is invalid: give a list of "
                               "one or more monitors, e.g. [ZoneMonitor(), PatternMonitor()]")
        built = []
        for spec in (_spec(m) for m in members):
            cls = monitor_class(spec["abstraction"])
            if issubclass(cls, CompositeMonitor):
                raise BoxhackError("a composite monitor cannot contain another composite")
            try:
                member = cls(**spec["params"])
            except TypeError as exc:
                raise BoxhackError(f"bad parameters for a {spec['abstraction']!r} member: "
                                   f"{exc}") from None
            for name in _SHARED:
                setattr(member, name, getattr(self, name))
            member._validate_params()
            built.append(member)
        self._members = built
        self.uses_preactivation = any(m.uses_preactivation for m in built)

    @property
    def members_(self) -> list[Monitor]:
        """The fitted member monitors (they share this monitor's layers and classes)."""
        self._check_fitted()
        return list(self._members)

    # ------------------------------------------------------------------ fitting
    def _fit_layer(self, layer: str, x: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        state: dict[str, np.ndarray] = {}
        for i, member in enumerate(self._members):
            member.n_classes_ = len(starts) - 1
            member.dims_ = {layer: x.shape[1]}
            for name, value in member._fit_layer(layer, x, starts).items():
                state[f"m{i}.{name}"] = value
        return state

    def _member_state(self, i: int, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prefix = f"m{i}."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def _refresh(self) -> None:
        for i, member in enumerate(self._members):
            member.layers_ = list(self.layers_)
            member.dims_ = dict(self.dims_)
            member.n_classes_ = self.n_classes_
            member.n_fit_ = self.n_fit_
            member.metadata_ = {}
            member.state_ = {layer: self._member_state(i, self.state_[layer])
                             for layer in self.layers_}  # fmt: skip
            member._refresh()
        self.derived_ = {layer: {} for layer in self.layers_}

    # ------------------------------------------------------------------ queries
    def _accept_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        out = np.ones(len(x), dtype=bool)
        rows = np.arange(len(x))
        for member in self._members:
            if len(rows) == 0:
                break
            ok = np.asarray(member._accept_layer(layer, x[rows], pred[rows]), dtype=bool)
            out[rows[~ok]] = False
            rows = rows[ok]
        return out

    def _decision_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return np.min([m._decision_layer(layer, x, pred) for m in self._members], axis=0)

    def _novelty_layer(self, layer: str, x: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return np.max([np.asarray(m._novelty_layer(layer, x, pred), dtype=np.float64)
                       for m in self._members], axis=0)  # fmt: skip

    def _margin_layer(self, layer: str, z: torch.Tensor, cl: torch.Tensor,
                      preactivation: bool) -> torch.Tensor:
        out = None
        for member in self._members:
            if preactivation and not member.uses_preactivation:
                m = member._margin_layer(layer, torch.relu(z), cl, False)
            else:
                m = member._margin_layer(layer, z, cl, preactivation)
            out = m if out is None else torch.minimum(out, m)
        return out

    # ------------------------------------------------------------------ files
    def _check_layer_state(self, layer: str, state: Mapping[str, np.ndarray], d: int,
                           n_classes: int) -> str | None:
        known = set()
        for i, member in enumerate(self._members):
            sub = self._member_state(i, state)
            known.update(f"m{i}.{k}" for k in sub)
            problem = member._check_layer_state(layer, sub, d, n_classes)
            if problem:
                return f"member {i} ({member.abstraction}): {problem}"
        extra = set(state) - known
        if extra:
            return f"unexpected arrays {sorted(extra)} for a composite of {len(self._members)}"
        counts = [(i, c) for i, c in self._member_counts(state, n_classes) if c is not None]
        for i, c in counts[1:]:
            if not np.array_equal(c, counts[0][1]):
                return (f"member {i} holds {c.tolist()} training vectors per class, member "
                        f"{counts[0][0]} {counts[0][1].tolist()}")
        return None

    def _member_counts(self, state: Mapping[str, np.ndarray], n_classes: int):
        return [(i, m._fit_counts(self._member_state(i, state), n_classes))
                for i, m in enumerate(self._members)]  # fmt: skip

    def _fit_counts(self, state: Mapping[str, np.ndarray], n_classes: int) -> np.ndarray | None:
        """The members' (equal, see ``_check_layer_state``) training counts."""
        return next((c for _, c in self._member_counts(state, n_classes) if c is not None), None)

    def _describe_layer(self, layer: str) -> dict[str, Any]:
        return {"members": [{"abstraction": m.abstraction, **m._describe_layer(layer)}
                            for m in self._members]}  # fmt: skip
