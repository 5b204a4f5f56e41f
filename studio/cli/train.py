"""``prefstudio train``: the trainer's own command (trainers/run/cli.py), with the studio's settings."""

from __future__ import annotations

from studio.cli.context import resolve_model_path, settings
from studio.cli.terminal_text import visible

TRAIN_HELP = ("Train a LoRA adapter on your feedback: --method dpo (preference pairs, the default), sft "
              "(demonstrations) or kto (good/bad labels); its own process, ctrl-c cancels at the next step and keeps "
              "the adapter so far.")


def train_command():  # noqa: ANN202
    from studio.safety.training_checks import check_before_prepare
    from trainers.run.cli import make_train_command

    def before_prepare(store, config, say) -> None:  # noqa: ANN001 - trainers.run.cli.BeforePrepare
        # --drop-flagged: the chosen replies checked with the configured checkers (the settings are loaded by
        # the main callback, after this command was built), their verdicts stored for the trainer.
        check_before_prepare(settings().safety, settings().threads)(store, config, say)

    # Dataset names and paths in the trainer's lines are user text: shown with control characters escaped.
    return make_train_command(get_db=lambda: settings().db, default_model=resolve_model_path, escape=visible,
                              before_prepare=before_prepare)
