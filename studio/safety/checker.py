"""The safety-checker seam, defined in ``trainers/safety_checks/checker.py`` (a training run's safety penalty
uses it too, and trainers never import the studio); re-exported here for the studio's checkers and screens."""

from trainers.safety_checks.checker import SafetyChecker, SafetyCheckerError, SafetyVerdict, checked_text_hash

__all__ = ["SafetyChecker", "SafetyCheckerError", "SafetyVerdict", "checked_text_hash"]
