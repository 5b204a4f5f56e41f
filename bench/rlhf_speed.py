"""RLHF speed (issue 16): the studio's RLOO (rollouts in llama.cpp) against a plain TRL ``RLOOTrainer`` script
(rollouts by transformers ``generate``), same reward model, prompts, group size and completion length.

    .venv/bin/python bench/rlhf_speed.py                      # default model, 20 studio steps, 3 plain steps
    .venv/bin/python bench/rlhf_speed.py --heldout-fraction 0.25 --work /tmp/rlhf   # also the held-out evidence
    .venv/bin/python bench/rlhf_speed.py --heldout-fraction 0.25 --work /tmp/rlhf --reward-epochs 6 \
        --learning-rate 1e-3 --beta 0.02     # the evidence run in the README (a reward model with a real margin)
    .venv/bin/python bench/rlhf_speed.py --studio-only --rollouts transformers   # no plain side, no ratio

First a reward model is trained by the studio (``--method reward``) on ``bench/fixtures/polite_pairs.jsonl``:
polite, on-topic replies preferred over curt ones (the prompts rendered as the model is chatted in). Then:

- the studio: ``prepare_run`` + the trainer process (``bench/rloo_step_split.py``: the studio's own process, its
  steps timed), ``--steps`` steps of ``--prompts`` prompts x ``--group`` replies of at most
  ``--completion-length`` tokens; its wall time from the key press (prepare, start, train, publish) is the
  "20-step run" figure;
- the plain script (``bench/plain_trl_rloo.py``) on the exact prompts the studio run trained on, ``--plain-steps``
  steps, TRL's defaults otherwise (plus ``use_cpu``).

Each side prints its seconds per step split into generation, reward and update (the mean over its steps after
the first, which pays one-off warm-up). With a held-out share the studio run also measures the mean reward of
greedy replies to its held-out prompts before and after (the run's summary), and the last KL. The last line is
``ratio <studio s/step / plain s/step>`` (target <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rloo_step_split import SPLIT_ENV, describe, read_split
from train_speed import REPO, SYSTEM, bench_prompts

BENCH = Path(__file__).resolve().parent
POLITE_PAIRS = BENCH / "fixtures" / "polite_pairs.jsonl"


def polite_pairs(gguf: Path) -> list[dict[str, str]]:
    """The fixture's pairs as TRL rows, each prompt rendered as the chat renders it for this model."""
    from trainers.model_prompt_format import prompt_format_for_model
    from trainers.prompt_format import ChatTurn

    fmt = prompt_format_for_model(gguf)
    rows = [json.loads(line) for line in POLITE_PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"prompt": fmt.render(SYSTEM, [ChatTurn("user", r["prompt"])]), "chosen": fmt.as_completion(r["chosen"]),
             "rejected": fmt.as_completion(r["rejected"])} for r in rows]


def rl_prompts(opts: argparse.Namespace) -> list[str]:
    """The RLOO prompts: the polite pairs' questions (what the reward model knows) and, beyond them, the banks'."""
    questions = [json.loads(line)["prompt"] for line in POLITE_PAIRS.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    wanted = opts.prompts if opts.heldout_fraction == 0 else max(opts.prompts, opts.evidence_prompts)
    return (questions + bench_prompts())[:wanted]


def train_run(store, config, gguf: Path, work: Path, command: list[str] | None = None,  # noqa: ANN001
              env: dict[str, str] | None = None) -> tuple[int, float]:
    """Prepare and train one studio run in its own process; (run id, seconds from the key press to done)."""
    from trainers.run.lifecycle import launch_command, prepare_run

    pressed = time.monotonic()
    prepared = prepare_run(store, config, model_path=gguf, runs_root=work / "runs")
    cmd = command + ["--db", str(store.path), "--run-id", str(prepared.run_id)] if command else \
        launch_command(prepared.run_id, store.path)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.monotonic() - pressed
    run = store.get_run(prepared.run_id)
    if run.status != "done":
        sys.exit(f"studio {config.method} run failed ({run.status}: {run.message}):\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return prepared.run_id, wall


def reward_run(store, gguf: Path, work: Path, opts: argparse.Namespace) -> int:  # noqa: ANN001
    """A reward model on the polite pairs: the one a kept ``--work`` folder already holds, else trained now."""
    from trainers.run_config import RunConfig

    done = [r for r in store.list_runs() if r.status == "done" and (r.config or {}).get("method") == "reward"]
    if done:
        print(f"reward model: run {done[0].id}, kept from an earlier bench in {work}", flush=True)
        return done[0].id

    data = work / "polite_pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in polite_pairs(gguf)), encoding="utf-8")
    config = RunConfig(method="reward", dataset=str(data), epochs=opts.reward_epochs, batch_size=2,
                       heldout_fraction=0.2, threads=opts.threads, save_steps=10_000)
    run_id, wall = train_run(store, config, gguf, work)
    evaluation = (store.get_run(run_id).summary or {}).get("heldout") or {}
    print(f"reward model: run {run_id}, {wall:.0f} s; held-out {json.dumps(evaluation, sort_keys=True)}", flush=True)
    return run_id


def studio_rloo(store, gguf: Path, work: Path, reward_id: int, opts: argparse.Namespace) -> dict:  # noqa: ANN001
    from trainers.run_config import RunConfig

    prompts = work / "prompts.txt"
    prompts.write_text("".join(p + "\n" for p in rl_prompts(opts)), encoding="utf-8")
    config = RunConfig(method="rloo", reward_run=reward_id, rl_prompts=str(prompts), batch_size=opts.prompts,
                       num_generations=opts.group, max_completion_length=opts.completion_length,
                       max_steps=opts.steps, heldout_fraction=opts.heldout_fraction, rollouts=opts.rollouts,
                       threads=opts.threads, save_steps=10_000, beta=opts.beta, learning_rate=opts.learning_rate,
                       importance_cap=opts.importance_cap, seed=opts.seed)
    split_file = work / "studio-split.json"
    run_id, wall = train_run(store, config, gguf, work, [sys.executable, str(BENCH / "rloo_step_split.py")],
                             {**os.environ, SPLIT_ENV: str(split_file)})
    run = store.get_run(run_id)
    metrics = store.run_metrics(run_id)
    return {"run_id": run_id, "wall_s": wall, "split": read_split(split_file), "summary": run.summary or {},
            "last": metrics[-1] if metrics else {}, "first": metrics[0] if metrics else {}}


def plain_rloo(store, gguf: Path, work: Path, reward_id: int, studio_run: int,  # noqa: ANN001
               opts: argparse.Namespace) -> dict:
    from trainers.model_source import converted_dir, sha256_of
    from trainers.rl_prompts import prompt_texts, run_prompts
    from trainers.run_config import RunConfig

    run = store.get_run(studio_run)
    train, _heldout = run_prompts(store, run, RunConfig.from_dict(run.config))
    data = work / "plain-prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompt_texts(train)), encoding="utf-8")
    cmd = [sys.executable, str(BENCH / "plain_trl_rloo.py"), "--data", str(data), "--model", str(gguf),
           "--out", str(work / "plain"), "--reward-dir", store.get_run(reward_id).output_dir,
           "--reward-base", str(converted_dir(sha256_of(gguf))), "--steps", str(opts.plain_steps),
           "--group", str(opts.group), "--prompts-per-step", str(opts.prompts),
           "--completion-length", str(opts.completion_length), "--beta", str(opts.beta)]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"plain TRL script plain_trl_rloo.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a bundled model's name or a .gguf path (default: gemma3-270m)")
    parser.add_argument("--steps", type=int, default=20, help="studio RLOO steps")
    parser.add_argument("--plain-steps", type=int, default=3, help="plain TRL steps (its s/step is the baseline)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="replies per prompt")
    parser.add_argument("--completion-length", type=int, default=48)
    parser.add_argument("--beta", type=float, default=0.1, help="KL penalty, both sides")
    parser.add_argument("--learning-rate", type=float, default=5e-5,
                        help="studio side's LoRA learning rate (RunConfig's default 5e-5)")
    parser.add_argument("--importance-cap", type=float, default=None,
                        help="studio side: truncated importance weights for the llama.cpp rollouts (default: off)")
    parser.add_argument("--rollouts", default="llama", choices=["llama", "transformers"], help="studio side")
    parser.add_argument("--heldout-fraction", type=float, default=0.0,
                        help="studio side: hold this share of the prompts out and measure their mean reward before "
                             "and after (the evidence run)")
    parser.add_argument("--evidence-prompts", type=int, default=40, help="prompts in all with a held-out share")
    parser.add_argument("--reward-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42, help="the studio run's seed (LoRA init, order, held-out split)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the runs here, and reuse the reward model kept there (default: a temporary folder)")
    parser.add_argument("--studio-only", action="store_true", help="no plain TRL side (no ratio)")
    opts = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from store.studio_store import Store
    from studio.inference import runtime_env  # noqa: F401
    from studio.inference.model_files import BUNDLED_MODELS, DEFAULT_MODEL_NAME, named_model_path

    name = opts.model or DEFAULT_MODEL_NAME
    gguf = named_model_path(name)
    if not gguf.is_file():
        sys.exit(f"--model {name}: not a bundled model ({', '.join(BUNDLED_MODELS)}) nor a .gguf file")
    with tempfile.TemporaryDirectory(prefix="rlhf-speed-") as tmp:
        work = opts.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"rloo: {opts.prompts} prompts x {opts.group} replies of <= {opts.completion_length} tokens per step, "
              f"studio {opts.steps} steps ({opts.rollouts} rollouts), plain {opts.plain_steps} steps, model "
              f"{gguf.name}", flush=True)
        with Store.open(work / "bench.db") as store:
            reward_id = reward_run(store, gguf, work, opts)
            studio = studio_rloo(store, gguf, work, reward_id, opts)
            print(describe("studio (llama.cpp rollouts)" if opts.rollouts == "llama" else "studio", studio["split"]),
                  flush=True)
            last, first = studio["last"], studio["first"]
            print(f"studio run {studio['run_id']}: {opts.steps} steps in {studio['wall_s']:.0f} s from the key press "
                  f"(target <= 600 s); reward {first.get('reward')} -> {last.get('reward')} (step 1 -> "
                  f"{last.get('step')}), KL {last.get('kl')}, rollout log-ratio {last.get('rollout/logratio')}",
                  flush=True)
            heldout = studio["summary"].get("heldout") or {}
            if heldout.get("after"):
                print(f"held-out mean reward (greedy): before {heldout['before'].get('reward')} -> after "
                      f"{heldout['after'].get('reward')} on {studio['summary'].get('heldout_prompts')} prompts",
                      flush=True)
            plain = None
            if not opts.studio_only:
                plain = plain_rloo(store, gguf, work, reward_id, studio["run_id"], opts)
                print(describe(f"plain TRL (transformers generate, bf16={plain['bf16']})", plain["split"]),
                      flush=True)
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
        if plain is not None:
            ratio = studio["split"]["mean"]["total"] / plain["split"]["mean"]["total"]
            print(f"ratio {ratio:.2f} (studio s/step / plain s/step; target <= 0.5)")


if __name__ == "__main__":
    main()
