"""A reward run's files as the studio reads them, without torch: the head and how a reply is tokenised.

``trainers/methods/reward.py`` writes them beside the run's LoRA: ``reward_model.json`` (EOS appended or not,
the head's file and key) and ``reward_head.safetensors`` (``score.weight``, 1 × hidden).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from trainers.prompt_format import ChatTurn

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store

SPEC_FILE = "reward_model.json"  # the name trainers/methods/reward.py writes


class RewardScorerError(Exception):
    """A reward run that cannot score for this engine (not a finished reward run, another base model, files
    missing) or a scorer that stopped. The message names the run and what to do."""


@dataclass(frozen=True)
class RewardHead:
    """How a reward run turns the last token's hidden state into a reward (``reward_model.json`` + its head)."""

    weight: npt.NDArray[np.float32]  # (hidden,)
    append_eos: bool  # EOS appended to prompt + reply before scoring (trainers.methods.reward.appends_eos)
    eos_token_id: int | None


def reward_files(store: Store, run: RunRecord) -> tuple[Path, RewardHead]:
    """The run's folder and its head (``reward_model.json`` + ``reward_head.safetensors``, read without torch)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from trainers.run.outputs import RunFolderError, checked_run_paths, runs_roots

    try:
        folder = checked_run_paths(run.output_dir, runs_roots(store.path)).output_dir
    except RunFolderError as exc:
        raise RewardScorerError(f"run {run.id}: {exc}") from None
    spec_path = folder / SPEC_FILE
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        head_file = folder / spec["head"]["file"]
        weight = load_file(str(head_file))[spec["head"]["key"]]
    except FileNotFoundError as exc:
        raise RewardScorerError(f"run {run.id} has no reward model files in {folder} ({exc.filename} is "
                                "missing)") from None
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise RewardScorerError(f"run {run.id}'s reward model files in {folder} are unreadable "
                                f"({type(exc).__name__}: {exc})") from None
    if weight.ndim != 2 or weight.shape[0] != 1 or not np.isfinite(weight).all():
        raise RewardScorerError(f"run {run.id}'s reward head in {folder} has shape {weight.shape} or holds "
                                "non-finite values; expected one finite row")
    head = RewardHead(weight=weight[0].astype(np.float32), append_eos=bool(spec.get("append_eos")),
                      eos_token_id=spec.get("eos_token_id"))
    return folder, head


def split_conversation(conversation: Sequence[ChatTurn]) -> tuple[str, list[ChatTurn]]:
    """The system text (a leading system turn, if any) and the turns after it, which must end with the user's."""
    turns = list(conversation)
    system = turns.pop(0).content if turns and turns[0].role == "system" else ""
    if not turns or turns[-1].role != "user":
        raise RewardScorerError("a conversation to score replies to must end with the user's turn")
    if any(turn.role == "system" for turn in turns):
        raise RewardScorerError("a conversation to score may have one system turn, and only first")
    return system, turns
