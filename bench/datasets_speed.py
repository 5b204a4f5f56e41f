"""Dataset import and export speed: the studio against a plain `datasets` round trip, same files, same run.

    .venv/bin/python bench/datasets_speed.py                  # 100k pairs, JSONL and parquet, 3 repeats
    .venv/bin/python bench/datasets_speed.py --pairs 20000 --repeat 1

100k TRL standard pairs are generated once (seeded) as JSONL and as parquet. For each file type, each
side runs in its own fresh process, timed from after its imports:

- studio: `import_dataset` into the studio's SQLite store (opened, and so created, before the clock: a
  studio has its store already) — detection, validation, content digests, one committed transaction —
  then `write_dataset_pairs`, the export `prefstudio datasets export` runs, back to the same file type.
- datasets: `datasets.load_dataset("json" | "parquet", data_files=..., split="train")` with an empty
  cache dir (so it really reads and converts), then `to_json` for JSONL, as the issue names it, and
  `to_parquet` for parquet: the same file type on both sides. The issue's wording taken literally for
  parquet too (load + `to_json`, a slower baseline that flatters the studio) is printed for reference,
  and not counted.

Peak memory is the worker process's peak RSS, read from /proc/self/status VmHWM (getrusage's ru_maxrss
where there is no /proc): the whole process, interpreter and imported libraries (sqlite-utils alone pulls
in pandas and numpy) included. The sources are written by a child process too, so the parent stays small. Medians of the repeats; the ratio (studio time /
datasets time) is printed last. Targets: ratio ≤ 1.5, studio peak RSS ≤ 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["tea", "coffee", "bicycles", "trains", "gardens", "libraries", "museums", "running", "cooking",
          "chess", "music", "rain", "winter", "markets", "bridges"]
GOOD = ["Here is a clear answer with one practical tip.", "Start small, then build a habit around it.",
        "It depends on your goals; here are two options to weigh.", "A short list helps: plan, try, review."]
BAD = ["No idea.", "Look it up.", "Whatever.", "That is not my problem."]


def generate(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` distinct TRL standard rows with prompt and replies of everyday lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        rows.append({
            "prompt": f"Question {i}: what should a beginner know about {topic}? Please keep it short.",
            "chosen": f"{rng.choice(GOOD)} For {topic}, begin with the basics and practise a little each day.",
            "rejected": f"{rng.choice(BAD)} ({topic})",
        })
    return rows


def write_sources(folder: Path, n: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = generate(n)
    jsonl = folder / "pairs.jsonl"
    with jsonl.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    parquet = folder / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    return {"jsonl": jsonl, "parquet": parquet}


# Workers (each in its own process)


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM where /proc has it (reset by exec), else getrusage's ru_maxrss.

    ru_maxrss survives exec on Linux, so a worker started from a big parent would report the parent's
    peak; VmHWM belongs to the worker's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def work_studio(container: str, src: Path, scratch: Path) -> dict[str, float]:
    import pyarrow.json  # noqa: F401 - imported before the clock, as `import datasets` imports it for its side
    import pyarrow.parquet  # noqa: F401

    from store import Store
    from store.datasets.export import write_dataset_pairs
    from store.datasets.importing import import_dataset

    with Store.open(scratch / "studio.db") as store:  # a studio has its store already
        start = time.perf_counter()
        report = import_dataset(store, src, name="bench")
        imported = time.perf_counter()
        count = write_dataset_pairs(store, [store.get_dataset("bench")], scratch / f"out.{container}", container)
        exported = time.perf_counter()
    assert report.n_added == count, (report, count)
    return {"import_s": imported - start, "export_s": exported - imported, "rows": count,
            "peak_rss_mb": _peak_rss_mb()}


def work_datasets(container: str, src: Path, scratch: Path, to_json: bool = False) -> dict[str, float]:
    import datasets

    datasets.disable_progress_bars()
    start = time.perf_counter()
    loaded = datasets.load_dataset("json" if container == "jsonl" else "parquet", data_files=str(src),
                                   split="train", cache_dir=str(scratch / "hf-cache"))
    imported = time.perf_counter()
    out = scratch / f"out.{container}"
    if container == "jsonl" or to_json:
        loaded.to_json(str(out))
    else:
        loaded.to_parquet(str(out))
    exported = time.perf_counter()
    return {"import_s": imported - start, "export_s": exported - imported, "rows": loaded.num_rows,
            "peak_rss_mb": _peak_rss_mb()}


def run_worker(side: str, container: str, src: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as scratch:
        env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", PREFSTUDIO_HOME=scratch)
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", side, "--container", container, "--src", str(src),
             "--scratch", scratch],
            capture_output=True, text=True, env=env, cwd=REPO, check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{side} worker failed:\n{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", choices=["studio", "datasets", "datasets-json"])
    parser.add_argument("--container", choices=["jsonl", "parquet"])
    parser.add_argument("--src", type=Path)
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--write-sources", type=Path)
    args = parser.parse_args()
    if args.write_sources:
        write_sources(args.write_sources, args.pairs)
        return
    if args.worker:
        if args.worker == "studio":
            result = work_studio(args.container, args.src, args.scratch)
        else:
            result = work_datasets(args.container, args.src, args.scratch, to_json=args.worker == "datasets-json")
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="bench-datasets-") as folder:
        subprocess.run([sys.executable, __file__, "--write-sources", folder, "--pairs", str(args.pairs)],
                       check=True, cwd=REPO)
        sources = {"jsonl": Path(folder) / "pairs.jsonl", "parquet": Path(folder) / "pairs.parquet"}
        sizes = {name: path.stat().st_size / 1e6 for name, path in sources.items()}
        print(f"{args.pairs:,} pairs: JSONL {sizes['jsonl']:.1f} MB, parquet {sizes['parquet']:.1f} MB; "
              f"{args.repeat} repeat(s), medians; each side in its own process; CPU {os.cpu_count()} core(s)")
        totals = {"studio": 0.0, "datasets": 0.0}
        ratios = {}
        studio_peak = 0.0
        for container, src in sources.items():
            medians = {}
            for side in ("studio", "datasets"):
                runs = [run_worker(side, container, src) for _ in range(args.repeat)]
                medians[side] = {key: statistics.median(r[key] for r in runs)
                                 for key in ("import_s", "export_s", "peak_rss_mb")}
                m = medians[side]
                total = m["import_s"] + m["export_s"]
                totals[side] += total
                print(f"{container:>7} {side:>8}: import {m['import_s']:6.2f} s   export {m['export_s']:6.2f} s   "
                      f"total {total:6.2f} s   peak RSS {m['peak_rss_mb']:6.0f} MB")
            studio_peak = max(studio_peak, medians["studio"]["peak_rss_mb"])
            ratios[container] = ((medians["studio"]["import_s"] + medians["studio"]["export_s"])
                                 / (medians["datasets"]["import_s"] + medians["datasets"]["export_s"]))
        # The baseline, literally, for parquet too: load_dataset + to_json. Shown, not counted.
        runs = [run_worker("datasets-json", "parquet", sources["parquet"]) for _ in range(args.repeat)]
        json_total = statistics.median(r["import_s"] + r["export_s"] for r in runs)
        print(f"parquet datasets load + to_json (the issue's wording): total {json_total:6.2f} s; studio/that "
              f"{(medians['studio']['import_s'] + medians['studio']['export_s']) / json_total:.2f}")
        overall = totals["studio"] / totals["datasets"]
        print(f"studio peak RSS {studio_peak:.0f} MB (VmHWM of the studio process; target ≤ 300 MB)")
        print(f"ratio studio/datasets (import + export time): jsonl {ratios['jsonl']:.2f}, "
              f"parquet {ratios['parquet']:.2f}, overall {overall:.2f} (target ≤ 1.5)")


if __name__ == "__main__":
    main()
