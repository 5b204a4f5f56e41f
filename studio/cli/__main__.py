"""``python -m studio.cli``: the same as the ``prefstudio`` command."""

from studio.cli.app import main

main()
