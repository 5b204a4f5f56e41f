"""SteerLM steering side by side: the same prompts answered by one SteerLM run at two attribute settings.

Both sides use the run's adapter, the same seed per prompt and the same sampling; only the values the prompt
carries differ (``trainers/steer_format.py``'s rule), so any difference in the answers is the steering's. The
result is stored with the run (evaluation kind ``steer_comparison``) for the report to show.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from studio.evaluation.prompts import PromptSource, resolve_prompts
from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run
from trainers.prompt_format import ChatTurn
from trainers.steer_format import (
    SteerValueError,
    attribute_string,
    check_values,
    steerable_attributes,
    steered_prompt,
)

if TYPE_CHECKING:
    from store.studio_store import Store
    from studio.inference.engine import ChatEngine, SamplingSettings

EVALUATION_KIND = "steer_comparison"


@dataclass(frozen=True)
class SteerRow:
    """One prompt answered at the first and at the second setting, with the same seed."""

    prompt: str
    first_text: str
    second_text: str
    seed: int


@dataclass
class SteerComparison:
    run_id: int
    settings: list[dict[str, int]]  # the two settings, in the order given
    prompts_source: str
    rows: list[SteerRow] = field(default_factory=list)

    def labels(self) -> tuple[str, str]:
        return attribute_string(self.settings[0]), attribute_string(self.settings[1])

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "settings": self.settings, "prompts_source": self.prompts_source,
                "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SteerComparison:
        return cls(int(data["run_id"]), [dict(s) for s in data["settings"]], str(data["prompts_source"]),
                   [SteerRow(**r) for r in data.get("rows", [])])


def checked_settings(store: Store, run_id: int, settings: list[Mapping[str, int]]) -> list[dict[str, int]]:
    """The two settings checked against the run (a finished SteerLM run, its trained attributes, 0–4)."""
    if len(settings) != 2:
        raise SteerValueError(f"--steer is given {len(settings)} time(s): give it twice, one setting per side "
                              "(e.g. --steer humor=0 --steer humor=4)")
    run = store.get_run(run_id)
    trained = steerable_attributes(run.config, run.summary, run.status, run.id)
    return [check_values(s, allowed=trained, where="--steer") for s in settings]


def steer_comparison(engine: ChatEngine, store: Store, run_id: int, settings: list[Mapping[str, int]], *,
                     system: str, sampling: SamplingSettings, seed: int = 0, prompts_from: str = "auto",
                     limit: int | None = None, progress: Callable[[int, int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> SteerComparison:
    """Answer the prompts at both settings with run ``run_id``'s adapter; stored with the run. Leaves the base
    model active. ValueError subclasses with user-facing messages. ``progress(done, total)`` after each answer
    (the compare screen's bar); ``should_stop()`` true ends it with nothing stored (a screen left)."""
    checked = checked_settings(store, run_id, settings)
    run = store.get_run(run_id)
    prompts, label = resolve_prompts(PromptSource.parse(prompts_from), store, run, [], [])
    if limit:
        prompts = prompts[:limit]
    name = adapter_name(run)
    engine.load_adapter(name, gguf_adapter_for_run(run, engine.info, store.path))
    result = SteerComparison(run_id, checked, label)
    engine.activate_adapter(name)
    try:
        for i, prompt in enumerate(prompts):
            text = prompt if isinstance(prompt, str) else prompt.text
            # Room for the attribute string is kept when fitting, as the chat's rounds do (judging.draft_round).
            fitted = engine.fit_prompt(system, [ChatTurn("user", text)], sampling.max_tokens + 48).text
            answers = []
            for values in checked:
                if should_stop is not None and should_stop():
                    return result
                answers.append(engine.generate(steered_prompt(fitted, values, engine.prompt_format.name), sampling,
                                               seed + i).text.strip())
                if progress is not None:
                    progress(2 * i + len(answers), 2 * len(prompts))
            result.rows.append(SteerRow(text, answers[0], answers[1], seed + i))
    finally:
        engine.activate_adapter(None)
    store.save_evaluation(run_id, EVALUATION_KIND, result.to_dict())
    return result


def stored_steer_comparison(store: Store, run_id: int) -> SteerComparison | None:
    """The run's latest stored steering side by side (``compare --steer`` or the compare screen's), if any."""
    data = store.latest_evaluation(run_id, EVALUATION_KIND)
    return SteerComparison.from_dict(data) if data else None


def steer_lines(result: SteerComparison) -> list[str]:
    """The comparison as text, one block per prompt (the CLI's and the report's)."""
    first, second = result.labels()
    lines = [f"run {result.run_id} steered: [{first}] vs [{second}] on {len(result.rows)} prompt(s) from "
             f"{result.prompts_source}, same seed per prompt"]
    for i, row in enumerate(result.rows, 1):
        lines += ["", f"{i}. {row.prompt} (seed {row.seed})", f"  [{first}] {row.first_text}",
                  f"  [{second}] {row.second_text}"]
    return lines
