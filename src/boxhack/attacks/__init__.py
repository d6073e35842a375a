"""Attacks on a classifier and its box monitor. Success is decided only by ``verify``."""

from boxhack.attacks.verify import GOALS, AttackResult, decide, verify

__all__ = ["GOALS", "AttackResult", "decide", "verify"]
