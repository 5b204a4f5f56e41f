"""Safety checks on replies: the checker interface (``checker``) and the checkers that implement it."""
