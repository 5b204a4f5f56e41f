"""An RL run's held-out prompts as comparison prompts: what ``compare --run N`` answers for an RLOO run by default.

An RLOO run learns from prompts alone and holds a share of them out (``heldout_fraction``, recorded with the run
by ``trainers/rl_prompts.py``). Its comparison answers those very prompts, each with the exact rendering the run
held it out with (base and tuned see the same text the policy was trained on), shown and scored by the reward
model as the user's question where the source still has it (a prompts file, a bank), else as rendered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from studio.evaluation.comparison import ComparisonError, ComparisonPrompt
from trainers.methods.registry import feedback_of

if TYPE_CHECKING:
    from store.records import RunRecord
    from store.studio_store import Store

def is_rl_run(run: RunRecord) -> bool:
    """A run of an online RL method (rloo): it learnt from prompts, sampling and scoring its own replies."""
    return feedback_of(str((run.config or {}).get("method", "dpo"))) == "prompts"


def optimised_reward_run(run: RunRecord) -> int | None:
    """The reward run an RL run was optimised against (its ``reward_run``): the default scorer of its comparison."""
    value = (run.config or {}).get("reward_run") if is_rl_run(run) else None
    return value if isinstance(value, int) else None


def _user_texts(rl_prompts: str | None) -> dict[str, str]:
    """The user's text of each prompt id of a file or bank source (ids as ``trainers/rl_prompts.py`` makes them)."""
    from trainers.pair_selection import PairSelectionError
    from trainers.rl_prompts import bank_path, file_prompts, parse_prompt_bank

    source = (rl_prompts or "").strip()
    if not source or source in ("store", "dataset"):
        return {}
    try:
        if source.startswith("bank:"):
            texts = parse_prompt_bank(bank_path(source).read_text(encoding="utf-8"))
            return {f"b{n}": text for n, text in enumerate(texts, start=1)}
        from pathlib import Path

        return dict(file_prompts(Path(source).expanduser()))
    except (OSError, PairSelectionError):
        return {}  # the prompts are still answered, shown as rendered


def rl_heldout_prompts(store: Store, run: RunRecord) -> list[ComparisonPrompt]:
    """The run's held-out prompts in the run's order; ``ComparisonError`` when it held none out or they cannot be
    read back (the source changed since)."""
    from trainers.pair_selection import PairSelectionError
    from trainers.rl_prompts import run_prompts
    from trainers.run_config import RunConfig

    if not run.heldout_ids:
        raise ComparisonError(f"run {run.id} held no prompts out (held-out fraction "
                              f"{(run.config or {}).get('heldout_fraction')}); compare on a bank or a file")
    try:
        config = RunConfig.from_dict(run.config)
        _train, heldout = run_prompts(store, run, config)
    except (ValueError, PairSelectionError) as exc:
        raise ComparisonError(f"run {run.id}'s held-out prompts cannot be read now: {exc}") from exc
    texts = _user_texts(config.rl_prompts)
    # A bank's ids carry the prompt's number before a digest; a file's are looked up whole.
    return [ComparisonPrompt(text=texts.get(e.example_id, texts.get(e.example_id.split(":")[0], e.prompt.strip())),
                             rendered=e.prompt) for e in heldout]
