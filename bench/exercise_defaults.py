"""Exercise defaults: which epochs / learning rate / beta make the DPO homework's effect visible soonest.

    .venv/bin/python bench/exercise_defaults.py                      # the grid below, ratios 0.0 and 1.0
    .venv/bin/python bench/exercise_defaults.py --configs 1,3 --ratios 0.0

Each config trains the bundled exercise (``assets/exercises/car_free_city_centres``: data size 50, so 10
items are held out) on the default model through the studio's own path: ``prepare_run`` and the trainer in
its own process (``launch_command``), exactly what ``ctrl+s`` on the exercise screen does. The adapter is
then exported to GGUF and the stance metric (support answer more likely than the oppose answer, scored by
llama.cpp) is measured on the held-out items before and after, for support ratio 0.0 (the run should
move the model *against* car-free centres) and 1.0 (*for* them). One greedy answer to the first test prompt
is printed per run, so a config that wrecks the model's language shows.

"Visible" means the held-out support count moved at least half of the way it could: for ratio 0.0 to at
most half the base count, for ratio 1.0 to at least halfway between the base count and all items. The last
line (the bench convention) is the ratio of the steps the fastest visible config needed to the steps of
the old learning rate and beta with the epochs raised until the effect was visible (the issue measured 3
epochs on the homework's data); when those never got there, an upper bound (steps / the most run).
Rows print as they finish, so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATASET = "car_free_city_centres"
DATA_SIZE = 50


@dataclass(frozen=True)
class Grid:
    epochs: int
    learning_rate: float
    beta: float
    note: str = ""

    @property
    def label(self) -> str:
        return f"epochs {self.epochs}, lr {self.learning_rate:g}, beta {self.beta:g}"


# Ordered so that a run cut short still has the baselines: the screen's old defaults (1 epoch, 5e-5, 0.1)
# first, then that learning rate with more epochs (the visible setting), then higher learning rates
# and betas. The defaults chosen from it (README, "Exercise mode"): 1 epoch, 5e-4, beta 0.1.
GRID = [
    Grid(1, 5e-5, 0.1, "the old exercise defaults"),
    Grid(3, 5e-5, 0.1, "the old lr and beta, 3 epochs"),
    Grid(1, 2e-4, 0.1),
    Grid(1, 5e-4, 0.1),
    Grid(1, 2e-4, 0.5),
    Grid(2, 2e-4, 0.1),
    Grid(1, 1e-3, 0.1),
]


def visible(ratio: float, before: int, after: int, n: int) -> bool:
    """Did the held-out support count move at least half of the room it had, the asked way?"""
    if ratio <= 0.0:
        return after <= before / 2
    return after >= before + (n - before) / 2


def train(store, db: Path, gguf: Path, runs: Path, grid: Grid, ratio: float, threads: int | None) -> tuple:  # noqa: ANN001
    from trainers.run.lifecycle import launch_command, prepare_run
    from trainers.run_config import RunConfig

    config = RunConfig(dataset=DATASET, data_size=DATA_SIZE, support_ratio=ratio, epochs=grid.epochs,
                       learning_rate=grid.learning_rate, beta=grid.beta, threads=threads, save_steps=10_000)
    prepared = prepare_run(store, config, model_path=gguf, runs_root=runs)
    t0 = time.monotonic()
    proc = subprocess.run(launch_command(prepared.run_id, db), capture_output=True, text=True)
    seconds = time.monotonic() - t0
    run = store.get_run(prepared.run_id)
    if run.status != "done":
        sys.exit(f"run failed ({run.status}: {run.message}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return run, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=None, help="1-based grid rows to run, e.g. 1,3 (default: all)")
    parser.add_argument("--ratios", default="0.0,1.0")
    parser.add_argument("--threads", type=int, default=None, help="training threads (default: all cores)")
    parser.add_argument("--gguf", default=None, help="model (default: the embedded Gemma 3 270M)")
    opts = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from store.datasets.importing import import_dataset
    from store.studio_store import Store
    from studio.evaluation.comparison import side_by_side
    from studio.evaluation.run_adapters import adapter_name, gguf_adapter_for_run
    from studio.evaluation.stance_metric import run_exercise_system, run_stance_items, stance_share
    from studio.inference import runtime_env  # noqa: F401  (before the heavy imports)
    from studio.inference.engine import ChatEngine, EngineConfig, SamplingSettings
    from studio.inference.model_files import ensure_default_model

    gguf = Path(opts.gguf) if opts.gguf else ensure_default_model()
    rows = [GRID[int(i) - 1] for i in opts.configs.split(",")] if opts.configs else GRID
    ratios = [float(r) for r in opts.ratios.split(",")]
    engine = ChatEngine(EngineConfig(model_path=gguf, n_ctx=1024))
    greedy = SamplingSettings(temperature=0.0, max_tokens=40)
    print(f"exercise {DATASET}, data size {DATA_SIZE}, batch 2, model {gguf.name}, {os.cpu_count()} CPU(s)",
          flush=True)
    header = f"{'config':<34} {'steps':>5} {'seconds':>7}  " + "  ".join(
        f"{'ratio ' + format(r, '.1f'):>14}" for r in ratios) + "  visible"
    results = []
    samples = []
    with tempfile.TemporaryDirectory(prefix="exercise-defaults-") as tmp:
        work = Path(tmp)
        db = work / "bench.db"
        with Store.open(db) as store:
            import_dataset(store, REPO / "assets" / "exercises" / DATASET)
            base_counts: dict[str, int] = {}
            print(header, flush=True)
            for grid in rows:
                cells, ok, steps, seconds = [], True, 0, 0.0
                for ratio in ratios:
                    run, secs = train(store, db, gguf, work / "runs", grid, ratio, opts.threads)
                    steps, seconds = run.summary["steps"], seconds + secs
                    items = run_stance_items(store, run)
                    system = run_exercise_system(run)
                    if system not in base_counts:
                        engine.activate_adapter(None)
                        base_counts[system] = stance_share(engine, items, system).support_preferred
                    before = base_counts[system]
                    name = adapter_name(run)
                    engine.load_adapter(name, gguf_adapter_for_run(run, engine.info, store.path))
                    engine.activate_adapter(name)
                    after = stance_share(engine, items, system).support_preferred
                    (row,) = side_by_side(engine, [store.test_prompts(DATASET)[0].prompt], system, greedy, 0,
                                          engine.activate_adapter, name)
                    engine.activate_adapter(None)
                    samples.append((grid.label, ratio, row.prompt, row.base_text, row.tuned_text))
                    ok = ok and visible(ratio, before, after, len(items))
                    cells.append(f"{before:>2} → {after:>2} of {len(items):<2}")
                results.append((grid, steps, ok))
                print(f"{grid.label:<34} {steps:>5} {seconds / len(ratios):>7.0f}  "
                      + "  ".join(f"{c:>14}" for c in cells) + f"  {'yes' if ok else 'no'}"
                      + (f"   ({grid.note})" if grid.note else ""), flush=True)
    engine.close()
    print("\nseconds: training per ratio (its own process, conversion cached), without the scoring")
    print("\ngreedy answers to the first test prompt (base → tuned):")
    for label, ratio, prompt, base, tuned in samples:
        print(f"  [{label}, ratio {ratio:.1f}] {prompt}\n      base : {base!r}\n      tuned: {tuned!r}")
    fastest = min((r for r in results if r[2]), key=lambda r: r[1], default=None)
    old = [r for r in results if r[0].learning_rate == 5e-5 and r[0].beta == 0.1]
    reference = min((r for r in old if r[2]), key=lambda r: r[1], default=None)
    longest = max(old, key=lambda r: r[1], default=None)
    if fastest and reference:
        print(f"ratio steps to a visible effect, fastest ({fastest[0].label}) / the old lr and beta "
              f"({reference[0].label}): {fastest[1]}/{reference[1]} = {fastest[1] / reference[1]:.2f}x")
    elif fastest and longest:  # the old lr and beta never got there: the ratio is at most this
        print(f"ratio steps to a visible effect, fastest ({fastest[0].label}) / the old lr and beta (not visible "
              f"after {longest[1]} steps, {longest[0].label}): {fastest[1]}/>{longest[1]} = "
              f"<{fastest[1] / longest[1]:.2f}x")
    else:
        print("ratio steps to a visible effect: not measured (no visible config"
              f"{'' if fastest else ' at all'}{'' if longest else ', the old lr and beta not run'} in this run)")

if __name__ == "__main__":
    main()
