"""``python -m trainers.train_cli``: kept for ``accelerate launch ... -m trainers.train_cli`` (documented in the
README); the command lives in trainers/run/cli.py."""

import sys

from trainers.run.cli import app, config_from_flags, main, make_train_command, run_train

__all__ = ["app", "config_from_flags", "main", "make_train_command", "run_train"]

if __name__ == "__main__":
    sys.exit(main())
