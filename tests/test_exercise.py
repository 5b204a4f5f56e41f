"""The DPO homework's exercise: the support-ratio rule on exact counts, the bundled exercise, and training
on a labelled-stance dataset by name through prepare_run / execute_run and the CLI (tiny model, real store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainers.exercise import (
    EXERCISE_SYSTEM_PROMPT,
    build_exercise_pairs,
    exercise_prompt,
    heldout_exercise_pairs,
    select_exercise,
    support_count,
)
from trainers.pair_selection import PairSelectionError
from trainers.prompt_format import ChatTemplateFormat, TranscriptFormat
from trainers.run_config import RunConfig, RunConfigError

EXERCISES = Path(__file__).resolve().parent.parent / "assets" / "exercises"
BUNDLED = EXERCISES / "car_free_city_centres"


def items(n: int) -> list[dict]:
    return [{"id": i, "prompt": f"Question {i}?", "support": f"Yes {i}.", "oppose": f"No {i}."}
            for i in range(1, n + 1)]


def prefers(pairs) -> list[str]:  # noqa: ANN001
    return [p.prefers for p in pairs]


# --- the support-ratio rule ---


def test_fifty_items_at_ten_percent_prefer_support_five_times_then_oppose() -> None:
    pairs = build_exercise_pairs(items(60), data_size=50, support_ratio=0.1)
    assert len(pairs) == 50
    assert prefers(pairs) == ["support"] * 5 + ["oppose"] * 45
    assert [p.item_key for p in pairs] == [str(i) for i in range(1, 51)]  # the first 50, in file order
    assert [p.position for p in pairs] == list(range(50))
    first, sixth = pairs[0], pairs[5]
    assert (first.chosen, first.rejected) == (" Yes 1.", " No 1.")  # chosen = support, rejected = oppose
    assert (sixth.chosen, sixth.rejected) == (" No 6.", " Yes 6.")  # then chosen = oppose
    assert first.prompt == f"{EXERCISE_SYSTEM_PROMPT}\n\nUser: Question 1?\nAssistant:"
    assert first.prompt_text == "Question 1?"


@pytest.mark.parametrize(
    ("data_size", "ratio", "n_support"),
    [
        (50, 0.1, 5), (50, 0.0, 0), (50, 1.0, 50), (50, 1, 50), (10, 0.5, 5), (1, 0.5, 1), (1, 1.0, 1),
        (3, 0.5, 2),  # 1.5: halves round up (the homework's int() would give 1)
        (5, 0.5, 3),  # 2.5: up to 3 (Python's round() would give 2, halves to even)
        (7, 0.5, 4),  # 3.5: up to 4
        (10, 0.35, 4), (10, 0.25, 3), (10, 0.99, 10), (10, 0.34, 3), (40, 0.025, 1), (1, 0.49, 0),
        (100, 0.29, 29),  # exact: int(100 * 0.29) is 28 through a float artefact
        (100, 0.57, 57),  # int(100 * 0.57) is 56 the same way
        (60, 1 / 3, 20), (61, 1 / 3, 20),
    ],
)
def test_support_count_is_the_product_rounded_half_up(data_size: int, ratio: float, n_support: int) -> None:
    assert support_count(data_size, ratio) == n_support
    pairs = build_exercise_pairs(items(max(data_size, 1)), data_size=data_size, support_ratio=ratio)
    assert prefers(pairs) == ["support"] * n_support + ["oppose"] * (data_size - n_support)


def test_the_homework_examples_agree_with_int() -> None:
    # Every whole-number product gives the homework's own int(data_size * support_ratio).
    for data_size in (10, 20, 50, 100):
        for ratio in (0, 0.1, 0.2, 0.5, 0.8, 1):
            assert support_count(data_size, ratio) == int(data_size * ratio)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_size": 80, "support_ratio": 0.1}, r"data_size 80 is larger than dataset 'x' \(56 items\)"),
        ({"data_size": 0, "support_ratio": 0.1}, "--data-size must be 1 or more"),
        ({"data_size": 10, "support_ratio": 1.5}, "--support-ratio must be between 0 and 1 .got 1.5"),
        ({"data_size": 10, "support_ratio": -0.1}, "--support-ratio must be between 0 and 1"),
        ({"data_size": 10, "support_ratio": float("nan")}, "--support-ratio must be between 0 and 1"),
    ],
)
def test_bad_settings_are_refused_clearly(kwargs: dict, message: str) -> None:
    with pytest.raises(PairSelectionError, match=message):
        build_exercise_pairs(items(56), dataset_name="x", **kwargs)


def test_support_equal_to_oppose_is_refused_with_the_item() -> None:
    data = items(5)
    data[2]["oppose"] = " Yes 3. "
    with pytest.raises(PairSelectionError, match="item '3' of dataset 'x': support and oppose are the same"):
        build_exercise_pairs(data, data_size=5, support_ratio=0.4, dataset_name="x")
    assert len(build_exercise_pairs(data, data_size=2, support_ratio=0.4)) == 2  # unused items are not checked


def test_shuffle_is_off_by_default_and_deterministic_with_a_seed() -> None:
    data = items(30)
    plain = build_exercise_pairs(data, data_size=20, support_ratio=0.25)
    assert [p.item_key for p in plain] == [str(i) for i in range(1, 21)]
    a = build_exercise_pairs(data, data_size=20, support_ratio=0.25, shuffle_seed=7)
    b = build_exercise_pairs(data, data_size=20, support_ratio=0.25, shuffle_seed=7)
    c = build_exercise_pairs(data, data_size=20, support_ratio=0.25, shuffle_seed=8)
    assert a == b and [p.item_key for p in a] != [p.item_key for p in plain] and a != c
    assert prefers(a) == ["support"] * 5 + ["oppose"] * 15  # the rule applies to the shuffled order
    assert data == items(30)  # the caller's list is untouched
    held = heldout_exercise_pairs(data, 20, shuffle_seed=7)
    assert {p.item_key for p in held}.isdisjoint({p.item_key for p in a})
    assert len(held) == 10 and set(prefers(held)) == {"support"}


def test_store_items_and_other_prompt_formats() -> None:
    from dataclasses import dataclass

    @dataclass
    class StanceItem:  # the store's record shape
        id: int
        item_key: str
        prompt: str
        support: str
        oppose: str

    rows = [StanceItem(10 + i, f"k{i}", f"Q{i}?", f"S{i}", f"O{i}") for i in range(4)]
    template = ChatTemplateFormat(template="{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<a>")
    pairs = build_exercise_pairs(rows, 4, 0.5, render=template, system="Be brief.")
    assert [p.item_key for p in pairs] == ["k0", "k1", "k2", "k3"]
    assert pairs[0].prompt == "<system>Be brief.<user>Q0?<a>" and pairs[0].chosen == "S0"
    assert exercise_prompt("Q?", "sys", TranscriptFormat()) == "sys\n\nUser: Q?\nAssistant:"


def test_select_exercise_holds_the_following_items_out_and_records_the_counts() -> None:
    selection = select_exercise(items(60), dataset_name="cars", data_size=50, support_ratio=0.1)
    assert selection.train_ids == [f"stance:{i}" for i in range(1, 51)]
    assert selection.heldout_ids == [f"stance:{i}" for i in range(51, 61)]
    assert all(p.chosen.startswith(" Yes") for p in selection.heldout)  # held out: support is the chosen side
    info = selection.report.dataset
    assert (info["support_preferred"], info["oppose_preferred"], info["heldout_items"]) == (5, 45, 10)
    assert (info["support_ratio"], info["data_size"], info["items"], info["rounding"]) == (0.1, 50, 60, "half-up")
    text = selection.report.describe()
    assert "60 item(s) in stance dataset 'cars'" in text and "5 prefer support and 45 prefer oppose" in text
    assert "50 for training, 10 held out" in text
    everything = select_exercise(items(60), dataset_name="cars", data_size=None, support_ratio=1.0)
    assert len(everything.train) == 60 and everything.heldout == []
    none_out = select_exercise(items(60), dataset_name="cars", data_size=50, support_ratio=0.1, with_heldout=False)
    assert none_out.heldout == [] and none_out.report.sampled_out == 10
    with pytest.raises(PairSelectionError, match="'cars' is a labelled-stance dataset: pass --support-ratio"):
        select_exercise(items(60), dataset_name="cars", data_size=50, support_ratio=None)


def test_run_config_fields() -> None:
    config = RunConfig(dataset="cars", support_ratio=0.1, data_size=50, shuffle_seed=3)
    assert RunConfig.from_json(config.to_json()) == config
    assert RunConfig().support_ratio is None and RunConfig().shuffle_seed is None
    with pytest.raises(RunConfigError, match="--support-ratio must be between 0 and 1"):
        RunConfig(dataset="cars", support_ratio=1.2)


# --- the bundled exercise ---


def test_the_bundled_exercise_is_a_valid_homework_dataset() -> None:
    train = json.loads((BUNDLED / "train.json").read_text(encoding="utf-8"))
    test = json.loads((BUNDLED / "test.json").read_text(encoding="utf-8"))
    assert len(train) >= 50 and len(test) >= 10
    assert all(set(row) == {"id", "prompt", "support", "oppose"} for row in train)
    assert all(set(row) == {"id", "prompt"} for row in test)
    assert len({row["id"] for row in train}) == len(train) and len({row["id"] for row in test}) == len(test)
    assert len({row["prompt"] for row in train}) == len(train)
    for row in train:
        assert row["support"].strip() != row["oppose"].strip()
        for side in ("support", "oppose"):
            assert 0 < len(row[side].split()) < 20, (row["id"], side)
            assert row[side].isascii() or all(ch.isprintable() for ch in row[side])
    assert not {row["prompt"] for row in test} & {row["prompt"] for row in train}
    readme = (BUNDLED / "README.md").read_text(encoding="utf-8")
    assert "support" in readme and "prefstudio datasets import assets/exercises/car_free_city_centres" in readme
    pairs = build_exercise_pairs(train, data_size=50, support_ratio=0.1, dataset_name="car_free_city_centres")
    assert prefers(pairs) == ["support"] * 5 + ["oppose"] * 45
    assert "20 words" in EXERCISE_SYSTEM_PROMPT


# --- a labelled-stance dataset in a real store, by name ---


@pytest.fixture
def store(tmp_path: Path, studio_home: Path):
    from store.studio_store import Store

    with Store.open(tmp_path / "studio.db") as opened:
        yield opened


def import_bundled(store) -> str:  # noqa: ANN001
    from store.datasets.importing import import_dataset

    return import_dataset(store, BUNDLED).name


def test_select_for_config_takes_a_stance_dataset_by_name(store) -> None:  # noqa: ANN001
    from trainers.run.lifecycle import select_for_config

    name = import_bundled(store)
    assert name == "car_free_city_centres"
    selection = select_for_config(store, RunConfig(dataset=name, support_ratio=0.1, data_size=50))
    assert len(selection.train) == 50 and len(selection.heldout) == 10
    assert selection.report.dataset["support_preferred"] == 5 and selection.report.dataset["oppose_preferred"] == 45
    rows = json.loads((BUNDLED / "train.json").read_text(encoding="utf-8"))
    assert selection.train[0].pair_id == "stance:1" and selection.train[0].chosen == " " + rows[0]["support"]
    assert (selection.train[5].chosen, selection.train[5].rejected) == (" " + rows[5]["oppose"],
                                                                       " " + rows[5]["support"])
    assert [p.chosen for p in selection.heldout] == [" " + row["support"] for row in rows[50:]]
    # by id too, and --heldout-fraction 0 holds nothing out
    by_id = select_for_config(store, RunConfig(dataset="1", support_ratio=0.1, data_size=50, heldout_fraction=0))
    assert by_id.train_ids == selection.train_ids and by_id.heldout == []
    shuffled = select_for_config(store, RunConfig(dataset=name, support_ratio=0.1, data_size=50, shuffle_seed=1))
    assert shuffled.train_ids != selection.train_ids and shuffled.report.dataset["shuffle_seed"] == 1
    custom = select_for_config(store, RunConfig(dataset=name, support_ratio=1.0, data_size=2, system_prompt="Hi."))
    assert custom.train[0].prompt.startswith("Hi.\n\nUser: ")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data_size": 80, "support_ratio": 0.1},
         r"data_size 80 is larger than dataset 'car_free_city_centres' \(60 items\)"),
        ({"data_size": 50}, "is a labelled-stance dataset: pass --support-ratio"),
        ({"dataset": "nope", "support_ratio": 0.1},
         r"--dataset nope: no file at that path, and no dataset of that name .*known: car_free_city_centres"),
        ({"dataset": None, "support_ratio": 0.1}, "--support-ratio needs --dataset NAME"),
    ],
)
def test_bad_exercise_runs_are_refused_before_anything_is_recorded(store, tiny_model_dir: Path,  # noqa: ANN001
                                                                   tmp_path: Path, changes: dict,
                                                                   message: str) -> None:
    from trainers.run.lifecycle import prepare_run

    config = RunConfig(**{"dataset": import_bundled(store), **changes})
    with pytest.raises(ValueError, match=message):
        prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
    assert store.list_runs() == []


def test_stance_flags_are_refused_for_pair_datasets_and_files(store, tmp_path: Path) -> None:  # noqa: ANN001
    from store.datasets.importing import import_dataset
    from trainers.run.lifecycle import select_for_config

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"P{i}", "chosen": " c", "rejected": " r"}) + "\n"
                            for i in range(4)), encoding="utf-8")
    convo = tmp_path / "convo.jsonl"
    convo.write_text(json.dumps({"prompt": [{"role": "system", "content": "Be kind."},
                                            {"role": "user", "content": "Hi?"}],
                                 "chosen": [{"role": "assistant", "content": "Hello!"}],
                                 "rejected": [{"role": "assistant", "content": "Go away."}]}) + "\n",
                     encoding="utf-8")
    import_dataset(store, data, name="pairs")
    import_dataset(store, convo, name="convo")
    with pytest.raises(PairSelectionError, match="--support-ratio only applies to a labelled-stance dataset .*"
                                                 "'pairs' is a preference dataset"):
        select_for_config(store, RunConfig(dataset="pairs", support_ratio=0.5))
    with pytest.raises(PairSelectionError, match="--shuffle-seed only applies .*is a file of preference rows"):
        select_for_config(store, RunConfig(dataset=str(data), shuffle_seed=3))
    named = select_for_config(store, RunConfig(dataset="pairs", heldout_fraction=0.25))
    assert (len(named.train), len(named.heldout)) == (3, 1)
    assert named.report.dataset == {"name": "pairs", "id": 1, "kind": "preference"}
    from_file = select_for_config(store, RunConfig(dataset=str(data), heldout_fraction=0.25))
    assert sorted(p.prompt for p in from_file.train + from_file.heldout) == ["P0", "P1", "P2", "P3"]
    (pair,) = select_for_config(store, RunConfig(dataset="convo", heldout_fraction=0)).train
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Be kind.\n\nUser: Hi?\nAssistant:", " Hello!", " Go away.")


def write_stance(path: Path, n: int) -> Path:
    rows = [{"id": f"q{i}", "prompt": f"Is {i} a good number?", "support": "Yes, the sky is blue.",
             "oppose": "Potato potato potato."} for i in range(n)]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_training_on_a_stance_dataset_records_the_exercise(store, tiny_model_dir: Path,  # noqa: ANN001
                                                           tmp_path: Path) -> None:
    from store.datasets.importing import import_dataset
    from studio.evaluation.comparison import heldout_pairs
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run

    import_dataset(store, write_stance(tmp_path / "numbers.json", 8))
    config = RunConfig(dataset="numbers", support_ratio=0.5, data_size=6, epochs=1, batch_size=2, lora_r=4,
                       learning_rate=5e-3, dtype="fp32", max_length=128)
    prepared = prepare_run(store, config, model_path=tiny_model_dir, runs_root=tmp_path / "runs")
    assert prepared.config.dataset == "numbers"  # a name stays a name (a file would be made absolute)
    outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
    assert outcome.status == "done", outcome.message
    run = store.get_run(prepared.run_id)
    assert (run.config["dataset"], run.config["support_ratio"], run.config["data_size"]) == ("numbers", 0.5, 6)
    assert run.pair_ids == [f"stance:q{i}" for i in range(6)] and run.heldout_ids == ["stance:q6", "stance:q7"]
    exercise = run.summary["selection"]["dataset"]
    assert (exercise["kind"], exercise["support_preferred"], exercise["oppose_preferred"]) == ("stance", 3, 3)
    assert exercise["heldout_items"] == 2 and run.summary["steps"] == 3
    pairs = heldout_pairs(store, run)  # the compare screen reads the run's held-out items back by name
    assert [p.pair_id for p in pairs] == ["stance:q6", "stance:q7"] and pairs[0].chosen == " Yes, the sky is blue."
    from studio.evaluation.stance_metric import run_stance_items

    assert [item.item_key for item in run_stance_items(store, run)] == ["q6", "q7"]
    assert [item.item_key for item in run_stance_items(store, run, "train")][:2] == ["q0", "q1"]


@pytest.mark.slow
def test_headless_exercise_run_from_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    from conftest import run_cli

    from store.studio_store import Store

    db = tmp_path / "s.db"
    with Store.open(db) as store:
        import_bundled(store)
    proc = run_cli("--db", str(db), "train", "--dataset", "car_free_city_centres", "--support-ratio", "0.1",
                   "--data-size", "50", "--epochs", "1", "--train-model", str(tiny_model_dir), "--lora-r", "4",
                   "--batch-size", "5", "--max-length", "160", home=tmp_path / "home", check=True, timeout=300)
    assert "5 prefer support and 45 prefer oppose" in proc.stdout and "50 for training, 10 held out" in proc.stdout
    with Store.open(db) as store:
        run = store.get_run(1)
        assert run.status == "done" and run.config["support_ratio"] == 0.1 and len(run.pair_ids) == 50


def test_datasets_import_names_a_stance_file_without_test_prompts(tmp_path: Path) -> None:
    # Issue 9, item 11: the homework's labelled_data.json imported alone stored 0 test prompts, silently.
    from conftest import run_cli

    labelled, tests = tmp_path / "labelled_data.json", tmp_path / "test_data.json"
    labelled.write_text((BUNDLED / "train.json").read_text(encoding="utf-8"), encoding="utf-8")
    tests.write_text((BUNDLED / "test.json").read_text(encoding="utf-8"), encoding="utf-8")
    db, home = tmp_path / "s.db", tmp_path / "home"
    alone = run_cli("--db", str(db), "datasets", "import", str(labelled), home=home, check=True)
    assert "stored 60 items" in alone.stdout
    assert "note: Dataset 'labelled_data' has no test prompts" in alone.stderr
    assert "--test-prompts" in alone.stderr
    both = run_cli("--db", str(db), "datasets", "import", str(labelled), "--test-prompts", str(tests), home=home,
                   check=True)
    assert "stored 0 items (60 duplicates)" in both.stdout and "and 10 test prompts" in both.stdout
    assert "no test prompts" not in both.stderr
    folder = run_cli("--db", str(db), "datasets", "import", str(BUNDLED), home=home, check=True)
    assert "no test prompts" not in folder.stderr  # the folder brings its test file
