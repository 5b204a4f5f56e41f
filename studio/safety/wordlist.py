"""A user's blocklist checker, defined in ``trainers/safety_checks/wordlist.py`` (its file format is described
there; a training run's safety penalty uses it too); re-exported here for the studio."""

from trainers.safety_checks.wordlist import WordCategory, WordListChecker, read_wordlist

__all__ = ["WordCategory", "WordListChecker", "read_wordlist"]
