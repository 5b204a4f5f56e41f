"""Reward scoring speed and exactness: the scorers against the 150 ms target, each against transformers in float32.

Scores two candidates of ~60 tokens to a new prompt each round (the scorer evaluates the prompt and both
replies) and again to the same prompt (the prompt cached), with the llama.cpp scorer
(``studio.reward.llama_scorer``: a second context on the served GGUF, the run's LoRA, the exported head) and the
torch worker process (``studio.reward.torch_worker``: transformers, the LoRA merged), as the default ``torch``
(computing as the run trained: its matmuls in bf16 for a bf16 run on a CPU with native bf16, else float32) and as
``torch-fp32`` (float32: exactly the float32 model). Wall time and the scoring process's CPU seconds
(``time.process_time`` here for llama.cpp, the worker's own for torch), the latter inflated much less by a loaded
machine.
Then the exactness: Pearson of llama.cpp and of the default worker against transformers + PEFT in float32 over
``--replies`` replies (the issue asks ≥ 0.99), and the float32 worker's largest difference from it.
Without ``--db``/``--run`` it first trains a reward model on the default model for ``--steps`` steps in a
temporary home (minutes; with ``--db`` set PREFSTUDIO_HOME to the home that run was trained in, or the worker
converts the model again). The last line is the ratio of the default scorer's median new-prompt wall time to the
150 ms target, with its CPU seconds and the other measurements' ratios beside it.

    .venv/bin/python bench/reward_scoring.py [--db studio.db --run ID] [--rounds 5] [--replies 50] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from store.studio_store import Store
from studio.inference import runtime_env  # noqa: F401,I001  (OMP_WAIT_POLICY before llama_cpp loads)
from studio.inference.engine import ChatEngine, EngineConfig
from studio.reward.scorer import DEFAULT_BACKEND, open_reward_scorer
from trainers.prompt_format import ChatTurn

TARGET_MS = 150.0
SENTENCES = [
    "The sky is blue on a clear day because air scatters blue light more than red light.",
    "Potato potato potato, said the potato to the other potato in the potato field.",
    "A good cup of tea needs fresh water, a warm pot and a few minutes of patience.",
    "Bicycles were first built in the nineteenth century and changed how people travelled.",
    "Leaves change colour in autumn when the green chlorophyll breaks down in the cold.",
    "I do not know, and I would rather not guess about something I cannot check.",
    "Refrigerators move heat out of the box with a fluid that evaporates and condenses.",
    "The moon is made of cheese, obviously, and everyone who says otherwise is lying.",
]
PROMPTS = [f"Question {i}: tell me something interesting about the world, please." for i in range(64)]


def reply(i: int, words: int = 44) -> str:
    """A reply of about 60 Gemma tokens, different for each ``i``."""
    text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(4))
    return " " + " ".join(text.split()[:words])


def machine_check_ms() -> float:
    """Median ms of one float32 pass's matmuls (Gemma 3 270M's 126 projections, 106 rows, weights that do not fit
    in the caches) in this process: the machine's state, for reading the timings beside it. On this project's
    2-core VM it took 115-122 ms in a quiet hour and 166-199 ms in a busy one, when the scorers took 2-3x as long."""
    import torch

    shapes = [(1024, 640), (256, 640), (256, 640), (640, 1024), (2048, 640), (2048, 640), (640, 2048)] * 18
    weights = [torch.randn(n, k) for n, k in shapes]
    inputs = {k: torch.randn(106, k) for k in (640, 1024, 2048)}
    times = []
    for _ in range(6):
        start = time.perf_counter()
        for (_n, k), weight in zip(shapes, weights, strict=True):
            torch.nn.functional.linear(inputs[k], weight)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def train_reward_run(home: Path, steps: int) -> tuple[Path, int]:
    os.environ["PREFSTUDIO_HOME"] = str(home)
    from studio.inference.model_files import ensure_default_model
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    db = home / "studio.db"
    model = ensure_default_model()
    with Store.open(db) as store:
        session = store.create_session("")
        for i in range(8):
            prompt_id = store.add_prompt(session, PROMPTS[i], [])
            ids = [store.add_candidate(prompt_id, slot, reply(i + slot * 3), f"User: {PROMPTS[i]}\nAssistant:",
                                       "bench", "0" * 64, {"temperature": 0.8}, seed=slot) for slot in (0, 1)]
            store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
        config = RunConfig(method="reward", learning_rate=2e-3, lora_r=8, batch_size=2, heldout_fraction=0.0,
                           max_steps=steps)
        prepared = prepare_run(store, config, model_path=model, runs_root=home / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda line: print(f"  train: {line}"))
        if outcome.status != "done":
            raise SystemExit(f"the reward run failed: {outcome.message}")
        return db, prepared.run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path)
    parser.add_argument("--run", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replies", type=int, default=50)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="reward-bench-"))
    db, run_id = (args.db, args.run) if args.db and args.run else train_reward_run(home, args.steps)

    from trainers.methods.reward import load_trained_reward_model, transformers_reward_scores

    with Store.open(db) as store:
        run = store.get_run(run_id)
        engine = ChatEngine(EngineConfig(model_path=Path(run.config["train_model"])))
        scorer = open_reward_scorer(store, run_id, engine, backend="llama")
        worker = open_reward_scorer(store, run_id, engine)  # the default
        worker_fp32 = open_reward_scorer(store, run_id, engine, backend="torch-fp32")  # exact
        model, tokenizer = load_trained_reward_model(Path(run.output_dir), Path(run.summary["model"]["model_dir"]))
        import torch

        torch.set_num_threads(engine.n_threads_batch)
        load_before = os.getloadavg()[0]
        check_before = machine_check_ms()
        n_tokens = len(scorer.token_ids(f"User: {PROMPTS[0]}\nAssistant:", reply(0)))

        def llama_call(conversation: list[ChatTurn], pair: list[str]) -> tuple[float, float]:
            """Wall and CPU seconds of one llama.cpp scoring (it runs in this process's threads)."""
            wall, cpu = time.perf_counter(), time.process_time()
            scorer.score(conversation, pair)
            return time.perf_counter() - wall, time.process_time() - cpu

        def worker_call(which):  # noqa: ANN001, ANN202 - a TorchWorkerScorer
            def call(conversation: list[ChatTurn], pair: list[str]) -> tuple[float, float]:
                """Wall seconds here, CPU seconds of the worker process (it reports them with its answer)."""
                wall = time.perf_counter()
                which.score(conversation, pair)
                return time.perf_counter() - wall, which.last_cpu_seconds
            return call

        calls = (("llama", scorer, llama_call), ("torch", worker, worker_call(worker)),
                 ("torch-fp32", worker_fp32, worker_call(worker_fp32)))
        times: dict[str, list[tuple[float, float]]] = {f"{name} {kind}": [] for name, _, _ in calls
                                                        for kind in ("new", "cached", "prepared")}
        for _name, _scorer, call in calls:  # warm-up: graphs, buffers
            call([ChatTurn("user", PROMPTS[-1])], [reply(0), reply(1)])
        for r in range(args.rounds):
            conversation = [ChatTurn("user", PROMPTS[r])]
            pair = [reply(2 * r), reply(2 * r + 1)]
            for name, _scorer, call in calls:
                times[f"{name} new"].append(call(conversation, pair))  # a new prompt: prompt + both replies
                times[f"{name} cached"].append(call(conversation, list(reversed(pair))))  # the prompt cached
            for name, which, call in calls:
                # As the chat does: the round's prompt prepared when it starts, the candidates generated by
                # llama.cpp meanwhile (here a scoring call in the served model's context: other weights through the
                # caches), then the replies scored.
                later = [ChatTurn("user", PROMPTS[32 + r])]
                which.prepare(later)
                llama_call(conversation, pair)
                times[f"{name} prepared"].append(call(later, pair))
        ms = {name: (1000 * statistics.median(w for w, _ in pairs), 1000 * statistics.median(c for _, c in pairs))
              for name, pairs in times.items()}
        print(f"two replies of {n_tokens} tokens (prompt + reply + EOS), median of {args.rounds} "
              f"(wall ms / CPU ms of the scoring process); the default torch worker computes in {worker.precision}:")
        for name, (wall, cpu) in ms.items():
            print(f"  {name:13s} {wall:7.0f} / {cpu:7.0f}")

        conversation = [ChatTurn("user", PROMPTS[0])]
        replies = [reply(i, words=8 + (i * 7) % 40) for i in range(args.replies)]
        fast = scorer.score(conversation, replies)
        exact = transformers_reward_scores(model, tokenizer, engine.prompt_format.render("", conversation), replies)
        pearson = float(np.corrcoef(fast, exact)[0, 1])
        spread = float(np.std(exact))
        print(f"exactness over {len(replies)} replies: Pearson {pearson:.4f} (target ≥ 0.99), mean |difference| "
              f"{float(np.mean(np.abs(np.subtract(fast, exact)))):.4f} against a spread (std) of {spread:.4f}")
        batched = worker_fp32.score(conversation, replies)  # prompt shared, replies packed in one pass
        print(f"torch-fp32 worker (LoRA merged, prompt shared, one packed pass) against transformers + PEFT reply by "
              f"reply: max |difference| {float(np.max(np.abs(np.subtract(batched, exact)))):.2e}")
        default_scores = worker.score(conversation, replies)
        print(f"torch worker (default, {worker.precision}) against transformers + PEFT in float32: Pearson "
              f"{float(np.corrcoef(default_scores, exact)[0, 1]):.4f}, max |difference| "
              f"{float(np.max(np.abs(np.subtract(default_scores, exact)))):.4f}, mean "
              f"{float(np.mean(np.abs(np.subtract(default_scores, exact)))):.4f} against a spread (std) of {spread:.4f}")
        scorer.close()
        precision = worker.precision
        print(f"machine check (bench/reward_scoring.py machine_check_ms): {check_before:.0f} ms before the timings, "
              f"{machine_check_ms():.0f} ms after (115-122 ms on this project's 2-core VM in a quiet hour)")
        worker.close()
        worker_fp32.close()
        engine.close()
    default = "torch new" if DEFAULT_BACKEND == "torch" else "llama new"
    others = "; ".join(f"{name} {wall / TARGET_MS:.2f} (CPU {cpu / TARGET_MS:.2f})" for name, (wall, cpu) in ms.items()
                       if name != default)
    print(f"ratio {ms[default][0] / TARGET_MS:.2f} (the default scorer ({default}, {precision}) on two ~60-token "
          f"replies to a new prompt, wall / "
          f"the {TARGET_MS:.0f} ms target; its CPU seconds {ms[default][1] / TARGET_MS:.2f}; {others}; load average "
          f"{load_before:.1f} → {os.getloadavg()[0]:.1f})")

if __name__ == "__main__":
    main()
