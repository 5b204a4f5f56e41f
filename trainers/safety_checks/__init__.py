"""Safety checkers that need no UI and no engine: the checker seam (``checker``), the bundled offensive-language
classifier (``profanity``) and a user's word list (``wordlist``). Here, below ``studio/``, so a training run's
safety penalty (``trainers/reward_functions.py``) uses the very checkers the chat uses; ``studio/safety/``
re-exports them and adds the guard model, the registry and the caches."""
