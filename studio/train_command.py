"""``prefstudio train``: the headless trainer's command, with the studio's database and default model.

Wired in ``studio.cli`` with ``app.command("train")(train_command.train)``. The flags are generated
from ``trainers.run_config.RunConfig`` (``--epochs``, ``--beta``, ``--lora-r``, …) by
``trainers.train_cli``; without ``--train-model`` the model the studio serves is trained.
"""

from __future__ import annotations

from pathlib import Path

from trainers.train_cli import make_train_command


def _db() -> Path | None:
    from studio import cli

    return cli.settings().db if cli.state.settings is not None else None


def _default_model() -> Path:
    from studio import cli

    return cli.resolve_model_path()


train = make_train_command(get_db=_db, default_model=_default_model)
