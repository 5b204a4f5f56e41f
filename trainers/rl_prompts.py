"""Where an RLOO run's prompts come from: read, rendered, cleaned, split, measured; read back by id in the run.

An online run learns from prompts alone (the replies are sampled while it trains and scored by a reward
model). ``--rl-prompts`` names the source:

| value            | prompts                                                                          |
|------------------|----------------------------------------------------------------------------------|
| ``store`` (none) | the store's prompts (``--session-id``: one session's), as the engine rendered them |
| ``dataset``      | the prompts of ``--dataset`` (a preference file, or any dataset in the store)      |
| ``bank:NAME``    | a prompt bank: ``assets/prompts/NAME.txt`` or a bank file (``parse_prompt_bank``)  |
| a file           | one prompt per line, or JSON Lines with a ``prompt`` on each line                 |

A user's text (a file's, a bank's) is rendered as one user turn in the model's prompt format, as the chat
renders it; a stored prompt keeps the exact text its candidates saw. Each prompt becomes a
``TrainingExample`` with an empty reply, so the selection, its report, the held-out split (``heldout_fraction``,
recorded with the run as ``heldout_ids``) and the hash are the examples' (``trainers/feedback_selection.py``).
A prompt that leaves no room for ``--max-completion-length`` tokens in the context is refused by name before
anything is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from store import feedback_yield
from trainers.feedback_selection import (
    ExampleReport,
    ExampleSelection,
    TrainingExample,
    examples_hash,
    prompt_of,
    recorded_examples,
)
from trainers.pair_selection import (
    PairSelectionError,
    dataset_file,
    find_dataset,
    read_dataset_file,
    store_dataset_pairs,
)
from trainers.prompt_format import ChatTurn
from trainers.run.plan import planned_steps, seeded_split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from store.records import RunRecord
    from store.studio_store import Store
    from trainers.prompt_format import PromptFormat
    from trainers.run_config import RunConfig

BANKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "prompts"
DEFAULT_CONTEXT = 1024  # tokens of prompt + reply when --max-length is not given (the examples' auto cap)
UNIT = "prompt"


def parse_prompt_bank(text: str) -> tuple[str, ...]:
    """A prompt bank's prompts: blocks separated by a blank line (a prompt may span lines); ``#`` lines are
    comments. The studio's prompt feed (``studio/evaluation/prompt_bank.py``) reads banks with this too."""
    prompts: list[str] = []
    block: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.strip():
            block.append(line.rstrip())
        elif block:
            prompts.append("\n".join(block))
            block = []
    if block:
        prompts.append("\n".join(block))
    return tuple(prompts)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PairSelectionError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise PairSelectionError(f"{what} {path}: is a folder, not a file of prompts") from None
    except UnicodeDecodeError as exc:
        raise PairSelectionError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


def bank_path(value: str) -> Path:
    """The file ``bank:NAME|PATH`` names: a bundled bank by name, else a path."""
    name = value.removeprefix("bank:").strip()
    bundled = BANKS_DIR / f"{name}.txt"
    return bundled if "/" not in name and bundled.is_file() else Path(name).expanduser()


def file_prompts(path: Path) -> list[tuple[str, str]]:
    """(id, user text) of each prompt in a file: JSON Lines with ``prompt`` (a ``.jsonl`` file, or one whose
    first line is a JSON object), else one prompt per line. A bad line is named."""
    text = _read_text(path, "prompts file")
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if path.suffix != ".jsonl" and not first.startswith("{"):
        return [(f"f{n}:{_digest(line.strip())}", line.strip()) for n, line in enumerate(lines, start=1)
                if line.strip()]
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairSelectionError(f"{path} line {n}: not JSON ({exc.msg})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str):
            raise PairSelectionError(f"{path} line {n}: no text field `prompt` (a JSON object "
                                     '{"prompt": "..."} per line)')
        out.append((f"f{n}:{_digest(prompt)}", prompt))
    return out


def _user_turn(fmt: PromptFormat, text: str) -> str:
    return fmt.render("", [ChatTurn("user", text)])


def _dataset_prompts(store: Store, config: RunConfig, render: Callable[[], PromptFormat]
                     ) -> tuple[list[TrainingExample], str]:
    if not config.dataset:
        raise PairSelectionError("--rl-prompts dataset needs --dataset NAME (or a preference JSONL file)")
    path = dataset_file(config.dataset)
    if path is not None:
        pairs = read_dataset_file(path, render())
        return [TrainingExample(f"d:{p.pair_id}", p.prompt, "", None, "dataset") for p in pairs], str(path)
    record = find_dataset(store, config.dataset)
    source = f"{record.kind} dataset '{record.name}'"
    if record.kind == "preference":
        pairs = store_dataset_pairs(store, record, render())
        return [TrainingExample(f"d:{p.pair_id}", p.prompt, "", None, "dataset") for p in pairs], source
    out = []
    for index, item in enumerate(store.feedback_items(record), start=1):
        messages = getattr(item, "prompt_messages", None)
        if messages:
            turns = [ChatTurn(m["role"], m["content"]) for m in messages]
            system = " ".join(t.content for t in turns if t.role == "system")
            prompt = render().render(system, [t for t in turns if t.role != "system"])
        else:
            prompt = item.prompt
        out.append(TrainingExample(f"i{record.id}:{index}:{_digest(prompt)}", prompt, "", None, "dataset"))
    return out, source


def available_prompts(store: Store, config: RunConfig, model: str | None = None
                      ) -> tuple[list[TrainingExample], str]:
    """Every prompt ``config`` names (rendered, before cleaning) and where they came from."""
    formats: list[PromptFormat] = []

    def render() -> PromptFormat:  # the model's prompt format, read only when a prompt needs rendering
        if not formats:
            from trainers.model_prompt_format import prompt_format_for_model

            formats.append(prompt_format_for_model(config.train_model or model))
        return formats[0]

    source = (config.rl_prompts or ("dataset" if config.dataset else "store")).strip()
    if source == "store":
        where = f"session {config.session_id}" if config.session_id is not None else "the store"
        contexts = feedback_yield.prompt_contexts(store.db, config.session_id)
        return [TrainingExample(f"p{c.prompt_id}", prompt_of(c, render), "", None, "stored") for c in contexts], where
    if source == "dataset":
        return _dataset_prompts(store, config, render)
    if source.startswith("bank:"):
        path = bank_path(source)
        texts = parse_prompt_bank(_read_text(path, "prompt bank"))
        return [TrainingExample(f"b{n}:{_digest(t)}", _user_turn(render(), t), "", None, "bank")
                for n, t in enumerate(texts, start=1)], f"prompt bank {path}"
    path = Path(source).expanduser()
    return [TrainingExample(i, _user_turn(render(), t), "", None, "file") for i, t in file_prompts(path)], str(path)


def select_prompts(store: Store, config: RunConfig, model: str | None = None) -> ExampleSelection:
    """The prompts ``config`` asks for, deduplicated, sampled (``--data-size``) and split with the seed; a
    ``PairSelectionError`` saying where to get some when there are none."""
    prompts, source = available_prompts(store, config, model)
    report = ExampleReport(source=source, unit=UNIT, total=len(prompts))
    seen: set[str] = set()
    kept: list[TrainingExample] = []
    for p in prompts:
        if not p.prompt.strip():
            report.empty += 1
        elif p.prompt in seen:
            report.duplicates += 1
        else:
            seen.add(p.prompt)
            kept.append(p)
    if not kept:
        raise PairSelectionError(
            f"RLOO needs prompts, and {source} has none: chat a few rounds first, or pass --rl-prompts FILE (one "
            "prompt per line), --rl-prompts bank:everyday, or --rl-prompts dataset with --dataset NAME")
    report.origins = {kept[0].origin: len(kept)}
    used, heldout_idx, report.sampled_out = seeded_split(len(kept), config)
    train = [kept[i] for i in used if i not in heldout_idx]
    heldout = [kept[i] for i in used if i in heldout_idx]
    report.used, report.train, report.heldout = len(used), len(train), len(heldout)
    return ExampleSelection(train, heldout, examples_hash(train + heldout), report)


def plan_prompts(selection: ExampleSelection, tokenizer: PreTrainedTokenizerBase, config: RunConfig
                 ) -> ExampleSelection:
    """The context checked (every prompt leaves room for ``--max-completion-length`` tokens, else the first
    that does not is named) and the steps counted."""
    context = int(config.max_length or DEFAULT_CONTEXT)
    room = context - config.max_completion_length
    examples = selection.train + selection.heldout
    lengths = [len(ids) for ids in tokenizer([e.prompt for e in examples])["input_ids"]]
    for example, length in zip(examples, lengths, strict=True):
        if length > room:
            shown = example.prompt.strip().replace("\n", " ")
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise PairSelectionError(
                f"prompt {example.example_id} ({shown!r}) is {length} tokens: with --max-completion-length "
                f"{config.max_completion_length} it does not fit the context of {context} tokens (--max-length); "
                "raise --max-length, or leave that prompt out")
    report = selection.report
    report.max_length, report.max_length_auto = context, config.max_length is None
    report.longest_tokens = max(lengths) + config.max_completion_length
    report.steps = planned_steps(len(selection.train), config)
    report.steps_per_epoch = None if config.max_steps else report.steps // int(config.epochs)
    return selection


def run_prompts(store: Store, run: RunRecord, config: RunConfig) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """The run's recorded training and held-out prompts, checked against its hash."""
    available, _source = available_prompts(store, config)
    return recorded_examples(run, available, UNIT)


def prompt_texts(examples: Sequence[TrainingExample]) -> list[str]:
    """The rendered prompts, in order (what the trainer samples replies for)."""
    return [e.prompt + e.completion for e in examples]
