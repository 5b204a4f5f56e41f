"""Training speed per method: the studio trainer against a plain TRL script of the same method, same data, same model.

    .venv/bin/python bench/train_speed.py                 # DPO, 50 pairs, 1 epoch, default model, CPU
    .venv/bin/python bench/train_speed.py --method kto    # dpo, sft, kto or reward
    .venv/bin/python bench/train_speed.py --model smollm2 # a bundled model by name, or a .gguf path
    .venv/bin/python bench/train_speed.py --device cuda --four-bit --pairs 200

Both sides train LoRA (r16, alpha 32, q/k/v/o) on the same examples with the same max length and batch size,
each in its own process. The examples come from one file of preference pairs: DPO and the reward model train
on the pairs, SFT on each pair's chosen reply (``--sft-include-chosen``), KTO on each pair unpaired, chosen
good and rejected bad (``--kto-from-pairs``); the plain script gets the same rows in its trainer's own format.
The plain scripts (``bench/plain_trl_<method>.py``, sharing ``plain_trl_common.py``) use TRL's documented
settings (its defaults, plus ``use_cpu=True`` on a CPU, without which they do not start) and load the GGUF the
way a plain script would. Timed: from trainer construction to the adapter saved (any precompute included), per
example per epoch; peak RSS of each process; for the studio also the whole run as the user sees it (from the key
press: prepare the run, start the process, to the adapter saved). The ratio is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainers.prompt_format import PromptFormat

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "You are a concise, friendly assistant."
OPENERS = ["Sure.", "Good question.", "Here is a simple way to think about it.", "In short:", "Happy to help."]
DETAILS = [
    "Start with the smallest step you can take today and build from there.",
    "Keep a short list, check it once in the morning and once in the evening.",
    "It helps to write the idea down in one sentence before you explain it to someone else.",
    "Most people find it easier when the task is tied to something they already do every day.",
    "If it does not work after a week, change one thing at a time and watch what happens.",
    "A timer or a reminder on your phone can do the remembering for you.",
    "Ask a friend to join you; plans shared with someone are kept more often.",
]
CURT = ["No idea.", "Just do it.", "That depends.", "Look it up online.", "Whatever works for you, I guess."]


def bench_prompts() -> list[str]:
    prompts = []
    for bank in sorted((REPO / "assets" / "prompts").glob("*.txt")):
        block: list[str] = []
        for line in bank.read_text(encoding="utf-8").splitlines() + [""]:
            if line.lstrip().startswith("#"):
                continue
            if line.strip():
                block.append(line.strip())
            elif block:
                prompts.append(" ".join(block))
                block = []
    return prompts or ["What is a good way to remember to drink enough water during the day?"]


def bench_pairs(n: int, fmt: PromptFormat, seed: int = 0) -> list[dict[str, str]]:
    """``n`` TRL preference rows shaped like the studio's: the prompt rendered as the chat engine renders it for
    the model (``fmt``: the transcript for Gemma, ChatML for SmolLM2), generated-style replies."""
    from trainers.prompt_format import ChatTurn

    rng = random.Random(seed)
    prompts = bench_prompts()
    rows = []
    for i in range(n):
        prompt = prompts[i % len(prompts)]
        rendered = fmt.render(SYSTEM, [ChatTurn("user", prompt)])
        chosen = fmt.as_completion(" ".join([rng.choice(OPENERS)] + rng.sample(DETAILS, rng.randint(2, 4))))
        rejected = fmt.as_completion(" ".join(rng.sample(CURT, rng.randint(1, 2))))
        rows.append({"prompt": rendered, "chosen": chosen, "rejected": rejected})
    return rows


# --- the rows each method trains on, from the same pairs ---------------------------------------------

# What the studio run is told so that it trains on exactly these rows of the pairs file (the RunConfig fields
# the method reads), and how the plain script's rows are made from the same pairs.
STUDIO_SETTINGS: dict[str, dict[str, object]] = {
    "dpo": {},
    "reward": {},
    "sft": {"sft_include_chosen": True},  # each pair's chosen reply is a demonstration
    "kto": {"kto_from_pairs": True},  # each pair unpaired: chosen good, rejected bad
}


def method_rows(method: str, pairs: list[dict[str, str]]) -> list[dict[str, object]]:
    """The plain TRL script's rows for ``method``: what the studio derives from the same pairs."""
    if method == "sft":
        return [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    if method == "kto":
        return [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                for p in pairs for side in ("chosen", "rejected")]
    return list(pairs)


def examples_per_epoch(method: str, n_pairs: int) -> int:
    return 2 * n_pairs if method == "kto" else n_pairs


# --- the two sides, each in its own process -----------------------------------------------------------


def run_studio(opts: argparse.Namespace, data: Path, gguf: Path, work: Path) -> dict:
    from store.studio_store import Store
    from trainers.run.lifecycle import launch_command, prepare_run
    from trainers.run_config import RunConfig

    pressed = time.monotonic()
    with Store.open(work / "bench.db") as store:
        config = RunConfig(
            method=opts.method, dataset=str(data), epochs=opts.epochs, batch_size=opts.batch_size,
            max_length=opts.max_length, heldout_fraction=0.0, device=opts.device, four_bit=opts.four_bit,
            threads=opts.threads, dtype=opts.dtype, save_steps=10_000,
        ).replace(**STUDIO_SETTINGS[opts.method])
        prepared = prepare_run(store, config, model_path=gguf, runs_root=work / "runs")
        proc = subprocess.run(launch_command(prepared.run_id, work / "bench.db"), capture_output=True, text=True)
        wall = time.monotonic() - pressed
        run = store.get_run(prepared.run_id)
    if run.status != "done":
        sys.exit(f"studio run failed ({run.status}: {run.message}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    s = run.summary
    seconds = s.get("seconds", {})
    return {"trainer_to_saved_s": seconds["trainer_to_saved"], "load_s": seconds.get("load", 0.0),
            "key_press_to_adapter_s": wall, "steps": s["steps"], "peak_rss_mb": s["peak_rss_mb"],
            "dtype": s.get("dtype", "?"), "step_s": seconds.get("step", {})}


def run_plain(opts: argparse.Namespace, data: Path, gguf: Path, work: Path) -> dict:
    script = Path(__file__).resolve().parent / f"plain_trl_{opts.method}.py"
    cmd = [sys.executable, str(script), "--data", str(data), "--model", str(gguf), "--out", str(work / "plain"),
           "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size), "--max-length", str(opts.max_length),
           "--device", opts.device]
    if opts.threads:
        cmd += ["--threads", str(opts.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"plain TRL script {script.name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="dpo", choices=sorted(STUDIO_SETTINGS),
                        help="the training method; its plain TRL script is bench/plain_trl_<method>.py")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="studio side")
    parser.add_argument("--four-bit", action="store_true", help="studio side: QLoRA (CUDA)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", "--gguf", dest="model", default=None,
                        help="a bundled model's name (gemma3-270m, smollm2) or a .gguf path (default: gemma3-270m)")
    parser.add_argument("--only", choices=["studio", "plain"], default=None)
    opts = parser.parse_args()

    sys.path.insert(0, str(REPO))
    from studio.inference import runtime_env  # noqa: F401
    from studio.inference.model_files import BUNDLED_MODELS, DEFAULT_MODEL_NAME, named_model_path
    from trainers.model_prompt_format import prompt_format_for_model

    name = opts.model or DEFAULT_MODEL_NAME
    gguf = named_model_path(name)
    if not gguf.is_file():
        sys.exit(f"--model {name}: not a bundled model ({', '.join(BUNDLED_MODELS)}) nor a .gguf file")
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        work = Path(tmp)
        data, rows = work / "pairs.jsonl", work / f"{opts.method}-rows.jsonl"
        fmt = prompt_format_for_model(gguf)
        pairs = bench_pairs(opts.pairs, fmt)
        data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
        rows.write_text("".join(json.dumps(r) + "\n" for r in method_rows(opts.method, pairs)))
        n = examples_per_epoch(opts.method, opts.pairs) * opts.epochs
        print(f"{opts.method}: {opts.pairs} pairs ({examples_per_epoch(opts.method, opts.pairs)} examples) x "
              f"{opts.epochs} epoch(s), max length {opts.max_length}, batch {opts.batch_size}, {opts.device}, "
              f"model {gguf.name}, {fmt.name} prompts", flush=True)
        results = {}
        if opts.only in (None, "studio"):
            results["studio"] = studio = run_studio(opts, data, gguf, work)
            print(f"studio trainer : {studio['trainer_to_saved_s'] / n:6.3f} s/example/epoch "
                  f"({studio['trainer_to_saved_s']:.1f} s, {studio['steps']} steps, {studio['dtype']}, step median "
                  f"{studio['step_s'].get('median', 0):.2f} s max {studio['step_s'].get('max', 0):.2f} s), "
                  f"peak RSS {studio['peak_rss_mb']:.0f} MB; key press to adapter {studio['key_press_to_adapter_s']:.1f} s",
                  flush=True)
        if opts.only in (None, "plain"):
            results["plain"] = plain = run_plain(opts, rows, gguf, work)
            print(f"plain TRL      : {plain['trainer_to_saved_s'] / n:6.3f} s/example/epoch "
                  f"({plain['trainer_to_saved_s']:.1f} s, {plain['steps']} steps, bf16={plain['bf16']}, "
                  f"grad ckpt={plain['gradient_checkpointing']}), peak RSS {plain['peak_rss_mb']:.0f} MB; "
                  f"model load {plain['load_s']:.1f} s", flush=True)
        print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
        if len(results) == 2:
            ratio = results["studio"]["trainer_to_saved_s"] / results["plain"]["trainer_to_saved_s"]
            print(f"peak RSS studio / plain: {results['studio']['peak_rss_mb']:.0f} MB / "
                  f"{results['plain']['peak_rss_mb']:.0f} MB", flush=True)
            print(f"ratio studio / plain {opts.method} (time per example per epoch): {ratio:.2f}x (target <= 0.70x)")


if __name__ == "__main__":
    main()
