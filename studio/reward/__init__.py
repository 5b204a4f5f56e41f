"""Reward models at work: a trained reward run opened as a scorer of replies (``scorer``)."""
