"""Orthogonal-PGD-style attack on a classifier and its monitor (any abstraction).

After Bryniarski, Hingun, Pachuca, Wang & Carlini, "Evading Adversarial Example Detection
Defenses with Orthogonal Projected Gradient Descent" (ICLR 2022): when an attack must satisfy a
classifier objective and a detector objective at once, summing the two losses lets one
gradient swamp the other and the iterate zig-zags. Orthogonal PGD instead steps on *one*
objective at a time, with that gradient projected orthogonally to the other's, so (to first
order) the step leaves the other objective unchanged:

- while the classifier constraint ``g1`` (the model predicts the row's class ``t``) is violated,
  step along ``grad g1`` minus its component along ``grad g2``;
- otherwise step along ``grad g2`` (the monitor's margin: in for "intrude"/"combined", out for
  "dos") minus its component along ``grad g1``.

Here the monitor plays the detector, and the rest is :class:`~boxhack.attacks.gradient.MonitorAttack`:
the same goals, norms, minimal (adaptive-radius, FMN-style) and budget (PGD) modes, slots and
exact verification. Each step needs both gradients (two backward passes), so it costs about
twice as much per step as ``MonitorAttack``.
"""

from __future__ import annotations

import torch

from boxhack.attacks.gradient import GOALS_SUPPORTED, MonitorAttack

__all__ = ["GOALS_SUPPORTED", "OrthogonalAttack"]


class OrthogonalAttack(MonitorAttack):
    """Orthogonal PGD on (classifier, monitor); parameters and call as :class:`MonitorAttack`,
    an :class:`~boxhack.attacks.base.Attack` (its ``face_init`` warm start for "dos" is off by
    default here, so the two search rules can be compared as they are)."""

    name = "orthogonal-pgd"
    two_gradients = True

    def __init__(self, goal: str = "dos", norm: str = "l2", mode: str = "minimal",
                 epsilon: float | None = None, steps: int | None = None, lr: float | None = None,
                 seed: int = 0, batch_size: int = 512, device: str = "cpu", **options):
        options.setdefault("face_init", False)
        super().__init__(goal=goal, norm=norm, mode=mode, epsilon=epsilon, steps=steps, lr=lr,
                         seed=seed, batch_size=batch_size, device=device, **options)

    def _direction(self, gr1, gr2, g, choose):
        # the classifier first while it is not satisfied; then the monitor; once both hold
        # (minimal mode keeps walking along the boundary) the one with less normalised slack
        violated = g < self.slack
        choose = torch.where(violated[:, 0], torch.zeros_like(choose),
                             torch.where(violated[:, 1], torch.ones_like(choose), choose))
        w = (choose == 0).to(gr1.dtype).unsqueeze(1)
        gc = torch.lerp(gr2, gr1, w)
        go = torch.lerp(gr1, gr2, w)
        coef = (gc * go).sum(1) / (go * go).sum(1).clamp_min(1e-30)
        return gc - coef.unsqueeze(1) * go, choose
