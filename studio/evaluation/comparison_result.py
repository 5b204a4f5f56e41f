"""One comparison of a run against the base model, typed: what ``run_comparison`` returns, what is stored with
the run (evaluation kind ``comparison``), and what ``studio.evaluation.comparison_text`` formats for the CLI,
the compare screen and the report.

Stored as JSON (``to_dict``); ``from_dict`` reads what this or an older version stored: keys it does not
know are ignored, and sampling settings it cannot read count as unrecorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from studio.evaluation.comparison import ComparisonRow
from studio.evaluation.reward_metric import RewardMeans
from studio.evaluation.safety_metrics import SafetyMetrics
from studio.inference.engine import SamplingSettings
from studio.inference.scoring import PreferenceMetrics

StanceParts = dict[str, Any]
"""The stance measured on an exercise run: ``{"heldout"/"train": {"before", "after", …}}`` (see
``studio.evaluation.stance_metric.run_stance_metrics``); an older result holds ``{"before", "after"}``."""


@dataclass
class ComparisonResult:
    """A run's answers side by side with the base's, and its metrics before and after."""

    run_id: int
    prompts_source: str  # where the prompts came from, in words ("held-out pairs", "prompt bank 'values'")
    rows: list[ComparisonRow]
    seed: int
    before: PreferenceMetrics | None = None  # held-out preference metrics of the base (raw accuracy, mean margin)
    after: PreferenceMetrics | None = None  # of the tuned model, with the base as DPO's reference
    notes: list[str] = field(default_factory=list)
    stance: StanceParts | None = None  # exercise runs: the support share before and after
    sampling: SamplingSettings | None = None  # the settings both sides answered with (temperature 0: greedy)
    prompts_spec: str = "auto"  # the PromptSource spec the prompts were chosen with
    safety: SafetyMetrics | None = None  # flagged rate and mean score per checker, base and tuned (when configured)
    reward: RewardMeans | None = None  # a reward model's score of every base and tuned answer (when one was chosen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "prompts_source": self.prompts_source, "seed": self.seed,
            "rows": [asdict(r) for r in self.rows],
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "notes": self.notes, "stance": self.stance,
            "sampling": self.sampling.to_dict() if self.sampling else None,
            "prompts_spec": self.prompts_spec,
            "safety": self.safety.to_dict() if self.safety else None,
            "reward": self.reward.to_dict() if self.reward else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonResult:
        rows = [ComparisonRow(**row) for row in data.get("rows", [])]
        return cls(run_id=data["run_id"], prompts_source=data["prompts_source"], rows=rows, seed=data["seed"],
                   before=metrics_from_dict(data.get("before")), after=metrics_from_dict(data.get("after")),
                   notes=data.get("notes", []), stance=data.get("stance"),
                   sampling=sampling_from_dict(data.get("sampling")), prompts_spec=data.get("prompts_spec", "auto"),
                   safety=SafetyMetrics.from_dict(data.get("safety")),
                   reward=RewardMeans.from_dict(data.get("reward")))


def metrics_from_dict(data: dict[str, Any] | None) -> PreferenceMetrics | None:
    """Stored preference metrics (the summary numbers of ``PreferenceMetrics.to_dict``), or None."""
    if not data:
        return None
    known = {f.name for f in fields(PreferenceMetrics)} - {"per_pair"}
    return PreferenceMetrics(**{k: v for k, v in data.items() if k in known})


def sampling_from_dict(data: dict[str, Any] | None) -> SamplingSettings | None:
    """Stored sampling settings, or None when there are none or another version wrote ones it cannot read."""
    if not data:
        return None
    known = {f.name for f in fields(SamplingSettings)}
    try:
        return SamplingSettings(**{k: v for k, v in data.items() if k in known})
    except (TypeError, ValueError):
        return None
