"""Preference pairs, read out of judgements (exported by store/datasets/export.py).

Pairs are never stored: they are derived on demand, so a changed rule applies to every past judgement. The
rules for every feedback kind (A/B, edits, rankings, …) and their table live in store/feedback_yield.py;
this module keeps the names the rest of the studio imports.
"""

from store.feedback_yield import PAIR_VERDICTS, read_pairs
from store.records import PreferencePair

__all__ = ["PAIR_VERDICTS", "PreferencePair", "read_pairs"]
