"""The standing table of bad inputs (issue 10): every case gets one clear ``error:`` line (or a note), the
exit code it should, no traceback, no raw terminal control bytes, and a real, populated database that is
exactly what it was before.

Cases run in-process through typer's CliRunner on the real ``studio.cli.app`` (fast); the few that could
hang or exhaust memory on a regression run the installed ``prefstudio`` in its own process. Full disks and
read-only folders are real: small tmpfs mounts (we run as root, as CI does); without mount rights those
rows are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import prefstudio_bin, prefstudio_home
from typer.testing import CliRunner

from store.datasets.importing import import_dataset
from store.studio_store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
ESC_TEXT = "Title \x1b]0;pwned\x07 then \x1b[2J cleared \x9b31m and \r back"
RUN_NAME = "run-20260101-000000-abcdef01"


# --- the studio every case runs against ------------------------------------------------------------


@dataclass
class Studio:
    home: Path
    data: Path
    db: Path
    model: Path  # the embedded Gemma (real)
    tiny: Path  # a tiny random HF model dir (for train cases)
    done_run: int
    crafted_run: int
    broken_run: int
    victim: Path  # the folder the crafted run's row names


def _judge(store: Store, session: int, prompt: str, first: str, second: str) -> None:
    rendered = f"sys\n\nUser: {prompt}\nAssistant:"
    prompt_id = store.add_prompt(session, prompt, [])
    a = store.add_candidate(prompt_id, 0, first, rendered, "m.gguf", "h", {}, 1)
    b = store.add_candidate(prompt_id, 1, second, rendered, "m.gguf", "h", {}, 2)
    store.record_judgement(prompt_id, "a", a, b)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, default_model, tiny_model_dir) -> Studio:
    from test_adapter_export import write_peft_adapter

    from studio.evaluation.compare_session import EVALUATION_KIND
    from studio.inference.model_files import inspect_gguf

    root = tmp_path_factory.mktemp("bad-inputs")
    home = root / "home"
    with prefstudio_home(home):
        data = home / "data"
        data.mkdir(parents=True)
        db = data / "studio.db"
        evil = root / "evil.jsonl"
        evil.write_text(json.dumps({"prompt": ESC_TEXT, "chosen": "ok \x1b[31mred", "rejected": "no\x07"}) + "\n")
        with Store.open(db) as store:
            session = store.create_session("sys")
            _judge(store, session, "What colour is the sky?", "Blue.", "Green.")
            _judge(store, session, ESC_TEXT, "fine \x1b]0;x\x07", "bad \x9b2J")
            import_dataset(store, FIXTURES / "trl_standard.jsonl", name="d")
            import_dataset(store, evil, name="evil\x1b]0;t\x07")
            runs = data / "runs"
            done_dir = write_peft_adapter(runs / RUN_NAME, inspect_gguf(default_model), layers=range(2))
            done = store.create_run({"epochs": 1}, "gemma-3-270m.gguf", str(done_dir), pair_ids=["j1"],
                                    heldout_ids=[], dataset_hash="abc")
            store.set_run_status(done, "done", "done: 1 steps")
            store.save_evaluation(done, EVALUATION_KIND, {"run_id": done, "prompts_source": "stored", "rows": [],
                                                          "seed": 0})
            victim = root / "victim"
            victim.mkdir()
            (victim / "precious.txt").write_text("do not delete")
            crafted = store.create_run({"epochs": 1}, "m", str(victim), pair_ids=["j1"], heldout_ids=[],
                                       dataset_hash="abc")
            store.set_run_status(crafted, "queued", "crafted")
            broken_dir = runs / "run-20260101-000001-abcdef02"
            broken_dir.mkdir()
            (broken_dir / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
            (broken_dir / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
            broken = store.create_run({"epochs": 1}, "m", str(broken_dir), pair_ids=["j1"], heldout_ids=[],
                                      dataset_hash="abc")
            store.set_run_status(broken, "done", "done")
    return Studio(home, data, db, default_model, tiny_model_dir, done, crafted, broken, victim)


def db_digest(path: Path) -> str:
    """A hash of every row of every table (the schema too): equal digests, unchanged database."""
    conn = sqlite3.connect(path)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


# --- real full and read-only file systems ------------------------------------------------------------


def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True, capture_output=True)


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory) -> bool:
    probe = tmp_path_factory.mktemp("mount-probe") / "m"
    try:
        _mount(probe, "size=64k")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return False
    _umount(probe)
    return True


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system holding ``folder`` until at most ``leave`` bytes are free."""
    free = shutil.disk_usage(folder).free - leave
    with (folder / "filler").open("wb") as handle:
        try:
            while free > 0:
                handle.write(b"\0" * min(free, 1 << 16))
                free -= 1 << 16
        except OSError:
            pass


# --- a case and its context ---------------------------------------------------------------------------


@dataclass
class Ctx:
    studio: Studio
    tmp: Path
    mounts: ExitStack
    check_db: Path
    after: list[Callable[[], None]] = field(default_factory=list)  # extra checks once the command ran

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def config(self, text: str) -> list[str]:
        return ["--config", str(self.file("config.toml", text))]

    def full_dir(self, leave: int = 0) -> Path:
        where = self.tmp / "full"
        _mount(where, "size=256k")
        self.mounts.callback(_umount, where)
        fill(where, leave)
        self.after.append(lambda: _no_partials(where))
        return where

    def readonly_dir(self) -> Path:
        where = self.tmp / "readonly"
        _mount(where, "ro,size=64k")
        self.mounts.callback(_umount, where)
        return where

    def db_on_full_disk(self) -> Path:
        """A copy of the studio database on its own nearly full file system (checked instead of the main one)."""
        where = self.tmp / "fulldb"
        size = self.studio.db.stat().st_size
        _mount(where, f"size={size + (1 << 20)}")
        self.mounts.callback(_umount, where)
        db = where / "studio.db"
        shutil.copyfile(self.studio.db, db)
        with Store.open(db):
            pass  # its -wal and -shm exist before the disk fills
        fill(where, leave=48 << 10)
        self.check_db = db
        return db

    def big_pairs_file(self, n: int = 4000) -> Path:
        lines = (json.dumps({"prompt": f"Question {i} " + "x" * 200, "chosen": f"yes {i}", "rejected": f"no {i}"})
                 for i in range(n))
        return self.file("big.jsonl", "\n".join(lines) + "\n")


def _no_partials(folder: Path) -> None:
    leftovers = [p.name for p in folder.rglob("*") if p.name != "filler"]
    assert not leftovers, f"left behind on the full disk: {leftovers}"


@dataclass
class Case:
    name: str
    args: Callable[[Ctx], list[str]]
    code: int
    phrase: str  # may use {tmp}, {db}, {data}
    mount: bool = False
    process: bool = False  # the installed binary in its own process (a regression could hang or blow up)
    db_changes: bool = False


def C(name: str, args: Callable[[Ctx], list[str]] | list[str], code: int, phrase: str, *, xfail: str = "",
      **kwargs) -> pytest.param:  # noqa: N802
    build = args if callable(args) else (lambda _ctx, fixed=args: list(fixed))
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Case(name, build, code, phrase, **kwargs), id=name, marks=marks)


def _model(ctx: Ctx) -> list[str]:
    return ["--model", str(ctx.studio.model)]


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _skip_gguf_value(fh, vtype: int) -> None:  # noqa: ANN001
    if vtype == 8:
        fh.seek(struct.unpack("<Q", fh.read(8))[0], 1)
    elif vtype == 9:
        item_type, count = struct.unpack("<IQ", fh.read(12))
        if item_type in _GGUF_SIZES:
            fh.seek(_GGUF_SIZES[item_type] * count, 1)
        else:
            for _ in range(count):
                _skip_gguf_value(fh, item_type)
    else:
        fh.seek(_GGUF_SIZES[vtype], 1)


def _gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def with_chat_template(source: Path, out: Path, template: str) -> Path:
    """A copy of the GGUF ``source`` whose ``tokenizer.chat_template`` is ``template``: the header is rebuilt and
    the tensor data copied as is (gguf-new-metadata does the same, but re-encodes every tensor: ~30 s here)."""
    from studio.inference.gguf_header import read_gguf_header

    header = read_gguf_header(source)
    alignment = int(header.metadata.get("general.alignment", 32))
    with source.open("rb") as fh:
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", fh.read(24))
        entries = []
        for _ in range(n_kv):
            start = fh.tell()
            key = fh.read(struct.unpack("<Q", fh.read(8))[0]).decode()
            _skip_gguf_value(fh, struct.unpack("<I", fh.read(4))[0])
            end = fh.tell()
            if key != "tokenizer.chat_template":
                fh.seek(start)
                entries.append(fh.read(end - start))
        infos_start = fh.tell()
        for _ in range(n_tensors):
            fh.seek(struct.unpack("<Q", fh.read(8))[0], 1)
            (n_dims,) = struct.unpack("<I", fh.read(4))
            fh.seek(8 * n_dims + 12, 1)
        infos_end = fh.tell()
        fh.seek(infos_start)
        infos = fh.read(infos_end - infos_start)
        entries.append(_gguf_string("tokenizer.chat_template") + struct.pack("<I", 8) + _gguf_string(template))
        head = struct.pack("<4sIQQ", magic, version, n_tensors, len(entries)) + b"".join(entries) + infos
        head += b"\0" * (-len(head) % alignment)
        fh.seek(header.data_start)
        with out.open("wb") as target:
            target.write(head)
            shutil.copyfileobj(fh, target, 1 << 22)
    return out


def _template_model(ctx: Ctx, template: str) -> list[str]:
    """The embedded model with ``template`` as its chat template."""
    return ["--model", str(with_chat_template(ctx.studio.model, ctx.tmp / "templated.gguf", template))]


NESTED = "[" * 100_000 + "]" * 100_000

CASES = [
    # --- item 1: exports never delete or replace what they did not write
    C("export-hf-into-data-folder", lambda c: ["datasets", "export", "d", "--format", "hf", "--out",
                                                str(c.studio.data)], 1, "is not empty"),
    C("export-hf-into-folder-with-user-files",
      lambda c: (c.file("mine/notes.txt", "mine"), ["datasets", "export", "d", "--format", "hf", "--out",
                                                     str(c.tmp / "mine")])[-1], 1, "notes.txt"),
    C("export-jsonl-over-database", lambda c: ["datasets", "export", "d", "--format", "jsonl", "--out",
                                                str(c.studio.db)], 1, "not an earlier jsonl export"),
    C("export-parquet-over-notes", lambda c: ["datasets", "export", "d", "--format", "parquet", "--out",
                                               str(c.file("notes.parquet", "my notes"))], 1,
      "not an earlier parquet export"),
    C("export-jsonl-to-a-folder", lambda c: ["datasets", "export", "d", "--out", str(c.studio.data)], 1,
      "is a folder"),
    C("export-hf-to-a-file", lambda c: ["datasets", "export", "d", "--format", "hf", "--out",
                                        str(c.file("f.txt", "x"))], 1, "is not a folder"),
    C("export-test-prompts-over-user-file",
      lambda c: (c.file("out/p_test_prompts.jsonl", "mine\n"),
                 ["datasets", "export", "d", "--test-prompts", "--out", str(c.tmp / "out" / "p.jsonl")])[-1], 1,
      "p_test_prompts.jsonl already exists"),
    C("export-jsonl-over-a-fifo", lambda c: ["datasets", "export", "d", "--out", str(_fifo(c))], 1,
      "is not a regular file"),
    C("export-unknown-format", ["datasets", "export", "d", "--format", "xml", "--out", "x.xml"], 1,
      "--format must be one of"),
    C("pairs-export-over-database", lambda c: ["pairs", "export", "--out", str(c.studio.db)], 1,
      "not an earlier jsonl export"),
    C("adapter-export-over-database", lambda c: [*_model(c), "adapters", "export", "--run", "1", "--out",
                                                  str(c.studio.db)], 1, "not an earlier GGUF adapter"),
    C("adapter-export-over-a-model", lambda c: [*_model(c), "adapters", "export", "--run", "1", "--out",
                                                 str(c.file("base.gguf", b"GGUF" + b"\0" * 64))], 1,
      "not an earlier GGUF adapter"),
    C("report-into-data-folder", lambda c: ["report", "--run", "1", "--out", str(c.studio.data)], 1,
      "is not empty"),
    C("report-into-an-hf-export", lambda c: (
        c.file("hfx/.prefstudio-export.json", '{"kind": "hf dataset", "files": []}'), c.file("hfx/x", "1"),
        ["report", "--run", "1", "--out", str(c.tmp / "hfx")])[-1], 1, "an earlier hf dataset export"),
    # --- item 2: a row naming a folder outside the runs folder
    C("train-crafted-output-dir", lambda c: ["train", "--run-id", str(c.studio.crafted_run)], 1,
      "not a run folder inside the runs folder"),
    # --- item 10: unwritable, read-only, full
    C("report-full-disk", lambda c: ["report", "--run", "1", "--out", str(c.full_dir() / "r")], 1,
      "full/r: the disk is full", mount=True),
    C("report-read-only", lambda c: ["report", "--run", "1", "--out", str(c.readonly_dir() / "r")], 1,
      "read-only", mount=True),
    C("report-under-a-file", lambda c: ["report", "--run", "1", "--out", str(c.file("plain", "x") / "r")], 1,
      "plain is a file, not a folder"),
    C("adapter-export-full-disk", lambda c: [*_model(c), "adapters", "export", "--run", "1", "--out",
                                             str(c.full_dir() / "a.gguf")], 1,
      "full/a.gguf: the disk is full", mount=True),
    C("adapter-export-read-only", lambda c: [*_model(c), "adapters", "export", "--run", "1", "--out",
                                             str(c.readonly_dir() / "a.gguf")], 1, "read-only", mount=True),
    C("adapter-export-under-a-file", lambda c: [*_model(c), "adapters", "export", "--run", "1", "--out",
                                                str(c.file("plain", "x") / "a.gguf")], 1,
      "plain is a file, not a folder"),
    C("export-jsonl-full-disk", lambda c: ["datasets", "export", "--all", "--out", str(c.full_dir() / "p.jsonl")],
      1, "the disk is full", mount=True),
    C("export-parquet-full-disk", lambda c: ["datasets", "export", "--all", "--format", "parquet", "--out",
                                             str(c.full_dir() / "p.parquet")], 1, "the disk is full", mount=True),
    C("export-hf-full-disk", lambda c: ["datasets", "export", "--all", "--format", "hf", "--out",
                                        str(c.full_dir() / "hf")], 1, "the disk is full", mount=True),
    C("export-hf-read-only", lambda c: ["datasets", "export", "--all", "--format", "hf", "--out",
                                        str(c.readonly_dir() / "hf")], 1, "read-only", mount=True),
    C("pairs-export-full-disk", lambda c: ["pairs", "export", "--out", str(c.full_dir() / "p.jsonl")], 1,
      "the disk is full", mount=True),
    C("import-onto-full-disk", lambda c: ["--db", str(c.db_on_full_disk()), "datasets", "import",
                                          str(c.big_pairs_file()), "--name", "big"], 1, "is full", mount=True),
    C("import-deeply-nested-json", lambda c: ["datasets", "import", str(c.file("nested.json", "[" + NESTED + "]"))],
      1, "nested too deeply"),
    C("import-deeply-nested-jsonl", lambda c: ["datasets", "import", str(c.file("nested.jsonl",
                                                                                  NESTED + "\n"))], 1,
      "nested.jsonl: malformed JSON at line 1, column 2: a value nested too deeply"),
    C("import-deeply-nested-record-line-2", lambda c: ["datasets", "import", str(c.file(
        "deep.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": ' + NESTED + "}\n"))], 1,
      "deep.jsonl: malformed JSON at line 2, column 1: a value nested too deeply"),
    # --- items 10/11: configuration and flags
    C("config-is-a-folder", lambda c: ["--config", str(c.tmp), "pairs", "list"], 1, "is not a file"),
    C("config-missing", lambda c: ["--config", str(c.tmp / "nope.toml"), "doctor"], 1, "config file not found"),
    C("config-n-ctx-true", lambda c: [*c.config("n_ctx = true\n"), "pairs", "list"], 1,
      "n_ctx must be a whole number"),
    C("config-n-ctx-zero", lambda c: [*c.config("n_ctx = 0\n"), "pairs", "list"], 1, "n_ctx must be"),
    C("config-threads-negative", lambda c: [*c.config("threads = -2\n"), "pairs", "list"], 1, "threads must be"),
    C("config-sampling-type", lambda c: [*c.config('[sampling]\ntemperature = "hot"\n'), "pairs", "list"], 1,
      "[sampling] temperature must be a number"),
    C("config-sampling-int-type", lambda c: [*c.config("[sampling]\nmax_tokens = 1.5\n"), "pairs", "list"], 1,
      "max_tokens must be a whole number"),
    C("config-sampling-bool", lambda c: [*c.config("[sampling]\ntop_p = true\n"), "pairs", "list"], 1,
      "top_p must be a number"),
    C("config-sampling-not-a-table", lambda c: [*c.config("sampling = 3\n"), "pairs", "list"], 1,
      "[sampling] must be a table"),
    C("config-sampling-unknown", lambda c: [*c.config("[sampling]\nwarmth = 1\n"), "pairs", "list"], 1,
      "unknown setting(s) warmth"),
    C("config-top-k-negative", lambda c: [*c.config("[sampling]\ntop_k = -5\n"), "pairs", "list"], 1, "top_k"),
    C("config-min-p-seven", lambda c: [*c.config("[sampling]\nmin_p = 7\n"), "pairs", "list"], 1, "min_p"),
    C("config-top-p-zero", lambda c: [*c.config("[sampling]\ntop_p = 0\n"), "pairs", "list"], 1, "top_p"),
    C("config-system-prompt-list", lambda c: [*c.config("system_prompt = [1, 2]\n"), "pairs", "list"], 1,
      "system_prompt must be text"),
    C("config-model-number", lambda c: [*c.config("model = 5\n"), "pairs", "list"], 1, "model must be a file path"),
    C("config-seed-negative", lambda c: [*c.config("seed = -1\n"), "pairs", "list"], 1, "seed must be"),
    C("config-unknown-key", lambda c: [*c.config('colour = "blue"\n'), "pairs", "list"], 1,
      "unknown setting(s) colour"),
    C("config-malformed-toml", lambda c: [*c.config("n_ctx = [unclosed\n"), "pairs", "list"], 1, "config.toml"),
    C("config-not-utf8", lambda c: ["--config", str(c.file("config.toml", b"model = '\xff'\n")), "pairs", "list"],
      1, "not UTF-8"),
    C("flag-threads-negative", ["--threads", "-3", "pairs", "list"], 1, "--threads must be"),
    C("flag-n-ctx-negative", ["--n-ctx", "-5", "pairs", "list"], 1, "--n-ctx must be"),
    C("flag-n-ctx-zero", ["--n-ctx", "0", "pairs", "list"], 1, "--n-ctx must be"),
    C("flag-seed-negative", ["--seed", "-1", "pairs", "list"], 1, "--seed must be"),
    # --- datasets
    C("import-empty-name", lambda c: ["datasets", "import", str(FIXTURES / "trl_standard.jsonl"), "--name", ""],
      1, "--name is empty"),
    C("import-blank-name", lambda c: ["datasets", "import", str(FIXTURES / "trl_standard.jsonl"), "--name", "  "],
      1, "--name is empty"),
    C("import-malformed-json", ["datasets", "import", str(FIXTURES / "malformed.json")], 1, "malformed.json"),
    C("import-malformed-jsonl-line", lambda c: ["datasets", "import", str(c.file(
        "bad.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": oops}\n'))], 1, "line 2"),
    C("import-missing-fields", ["datasets", "import", str(FIXTURES / "missing_fields.json")], 1,
      "missing_fields.json"),
    C("import-not-utf8", ["datasets", "import", str(FIXTURES / "not_utf8.jsonl")], 1, "not_utf8.jsonl"),
    C("import-empty-file", ["datasets", "import", str(FIXTURES / "empty.json")], 1, "empty.json"),
    C("import-unknown-schema", ["datasets", "import", str(FIXTURES / "unknown.json")], 1, "unknown.json"),
    C("import-missing-file", lambda c: ["datasets", "import", str(c.tmp / "nope.jsonl")], 1, "nope.jsonl"),
    C("import-plain-folder", lambda c: ["datasets", "import", str(c.tmp)], 1, "holds no data file"),
    C("import-unknown-format", ["datasets", "import", str(FIXTURES / "trl_standard.jsonl"), "--format", "csv"], 1,
      "csv"),
    C("import-support-equals-oppose", ["datasets", "import", str(FIXTURES / "support_equals_oppose.json")], 1,
      "support_equals_oppose.json"),
    C("show-missing-dataset", ["datasets", "show", "nope"], 1, "nope"),
    C("export-nothing-selected", ["datasets", "export", "--out", "x.jsonl"], 1, "nothing to export"),
    C("export-bad-prefer", ["datasets", "export", "d", "--prefer", "maybe", "--out", "x.jsonl"], 1, "--prefer"),
    C("export-bad-verdict", lambda c: ["datasets", "export", "--verdict", "tie", "--out", str(c.tmp / "x.jsonl")],
      1, "give no pairs"),
    C("export-bad-date", lambda c: ["datasets", "export", "--since", "yesterday", "--out", str(c.tmp / "x.jsonl")],
      1, "cannot read the date"),
    C("export-missing-dataset", lambda c: ["datasets", "export", "nope", "--out", str(c.tmp / "x.jsonl")], 1,
      "nope"),
    # --- item 8: stored text never drives the terminal (exit 0, escapes shown)
    C("show-escapes-stored-text", ["datasets", "show", "2"], 0, "\\x1b]0;pwned\\x07"),
    C("list-escapes-dataset-name", ["datasets", "list"], 0, "evil\\x1b]0;t\\x07"),
    C("pairs-list-escapes-text", ["pairs", "list"], 0, "\\x1b]0;pwned"),
    C("import-report-escapes-name", lambda c: ["--db", str(c.tmp / "other.db"), "datasets", "import",
                                               str(FIXTURES / "trl_standard.jsonl"), "--name", "n\x1b[2J"], 0,
      "n\\x1b[2J"),
    C("train-dry-run-escapes-dataset-name", lambda c: ["train", "--train-model", str(c.studio.tiny), "--dataset",
                                                       "evil\x1b]0;t\x07", "--dry-run"], 0, "evil\\x1b]0;t\\x07"),
    C("train-error-escapes-dataset-name", lambda c: ["train", "--train-model", str(c.studio.tiny), "--dataset",
                                                     "nope\x1b[2J"], 1, "nope\\x1b[2J"),
    C("doctor-names-the-config-in-use", lambda c: [*c.config("n_ctx = 1024\n"), *_model(c), "doctor"], 0,
      "config.toml (read)"),
    C("compare-json-escapes-prompt", lambda c: [
        *_model(c), "--db", str(_copy(c)), "compare", "--run", "1", "--json", "--max-tokens", "1", "--prompts",
        str(c.file("p.txt", "Say \x1b]0;x\x07 and \x9b2J\n"))], 0, "\\u001b]0;x\\u0007 and \\u009b2J",
      db_changes=True),  # the comparison is stored: checked on a copy
    # --- database files
    C("db-under-a-file", lambda c: ["--db", str(c.file("plain", "x") / "s.db"), "pairs", "list"], 1,
      "plain is a file, not a folder"),
    C("db-not-a-database", lambda c: ["--db", str(c.file("junk.db", b"x" * 4096)), "pairs", "list"], 1,
      "not a readable Preference Studio database"),
    C("db-damaged-pages", lambda c: ["--db", str(_damaged_copy(c)), "datasets", "list"], 1, "damaged pages ("),
    C("db-newer-schema", lambda c: ["--db", str(_newer_copy(c)), "pairs", "list"], 1, "newer Preference Studio"),
    # --- models, runs, adapters, reports
    C("generate-empty-prompt", lambda c: [*_model(c), "generate", "   "], 1, "the prompt is empty"),
    C("generate-junk-model", lambda c: ["--model", str(c.file("m.gguf", b"not a model")), "generate", "hi"], 1,
      "is not a GGUF file"),
    C("generate-truncated-model", lambda c: ["--model", str(c.file("t.gguf", c.studio.model.read_bytes()[:4096])),
                                             "generate", "hi"], 1, "t.gguf"),
    C("generate-missing-model", lambda c: ["--model", str(c.tmp / "missing.gguf"), "generate", "hi"], 1,
      "model file not found"),
    C("adapter-export-missing-run", lambda c: [*_model(c), "adapters", "export", "--run", "99", "--out",
                                               str(c.tmp / "a.gguf")], 1, "99"),
    C("adapter-export-unfinished-run", lambda c: [*_model(c), "adapters", "export", "--run",
                                                  str(c.studio.crafted_run), "--out", str(c.tmp / "a.gguf")], 1,
      "only finished or cancelled runs"),
    C("adapter-export-broken-adapter", lambda c: [*_model(c), "adapters", "export", "--run",
                                                  str(c.studio.broken_run), "--out", str(c.tmp / "a.gguf")], 1,
      "adapter does not fit"),
    C("report-missing-run", lambda c: ["report", "--run", "99", "--out", str(c.tmp / "r")], 1, "99"),
    C("compare-missing-run", lambda c: [*_model(c), "compare", "--run", "99"], 1, "99"),
    # --- training flags
    C("train-unknown-target-module", lambda c: ["train", "--train-model", str(c.studio.tiny), "--target-modules",
                                                "q_proj,qq_proj"], 1, "qq_proj matches no module"),
    C("train-unknown-target-module-gguf", lambda c: ["train", "--train-model", str(c.studio.model),
                                                     "--target-modules", "attn_qq"], 1, "attn_qq matches no module"),
    C("train-dry-run-unknown-target-module", lambda c: ["train", "--train-model", str(c.studio.tiny),
                                                        "--target-modules", "q_prj", "--dry-run"], 1,
      "q_prj matches no module"),
    C("train-lora-r-zero", lambda c: ["train", "--train-model", str(c.studio.tiny), "--lora-r", "0"], 1,
      "--lora-r must be 1 or more"),
    C("train-threads-negative", lambda c: ["train", "--train-model", str(c.studio.tiny), "--threads", "-3"], 1,
      "--threads must be 1 or more"),
    C("train-missing-run", ["train", "--run-id", "99"], 1, "99"),
    C("train-missing-model", lambda c: ["train", "--train-model", str(c.tmp / "none.gguf")], 1,
      "model to train not found"),
    C("train-data-size-too-large", lambda c: ["--db", str(_copy(c)), "train", "--train-model", str(c.studio.tiny),
                                              "--data-size", "1000", "--prepare-only"], 0,
      "--data-size 1000 is more than the 2 usable pair(s)", db_changes=True),
    # --- item 9 (H3): a model whose chat template fails is named, with the template error
    C("template-syntax-error", lambda c: [*_template_model(c, "{% if %}"), "generate", "hi", "--max-tokens", "2"],
      1, "chat template"),
    C("template-raises", lambda c: [*_template_model(c, "{{ raise_exception('no system role') }}"), "generate",
                                    "hi", "--max-tokens", "2"], 1, "no system role"),
    C("template-huge-output", lambda c: [*_template_model(c, "{% for i in range(100000000) %}xxxxxxxxxx{% endfor %}"),
                                         "generate", "hi", "--max-tokens", "2"], 1, "chat template", process=True),
]


def _fifo(ctx: Ctx) -> Path:
    """A named pipe: like /dev/null, a node an atomic rename would replace (safe to try here, unlike /dev/null)."""
    path = ctx.tmp / "pipe.jsonl"
    os.mkfifo(path)
    ctx.after.append(lambda: _still_a_fifo(path))
    return path


def _still_a_fifo(path: Path) -> None:
    import stat

    assert stat.S_ISFIFO(path.lstat().st_mode), f"{path} was replaced"


def _copy(ctx: Ctx) -> Path:
    db = ctx.tmp / "copy.db"
    with sqlite3.connect(ctx.studio.db) as source, sqlite3.connect(db) as target:
        source.backup(target)
    ctx.check_db = db
    return db


def _newer_copy(ctx: Ctx) -> Path:
    db = _copy(ctx)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    ctx.check_db = ctx.studio.db
    return db


def _damaged_copy(ctx: Ctx) -> Path:
    """A copy whose header is sound but whose last pages are overwritten: it opens, reads fail later."""
    db = _copy(ctx)
    ctx.check_db = ctx.studio.db
    # VACUUM writes the schema's pages first: with more tables than fit one page, the schema grew a page at the
    # end of the file, and damaging that would fail the open itself (another clear message) instead.
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("VACUUM")
    raw = bytearray(db.read_bytes())
    page = int.from_bytes(raw[16:18], "big") or 65536
    for start in range(len(raw) - 3 * page, len(raw), page):
        raw[start:start + page] = b"\xa5" * page
    db.write_bytes(bytes(raw))
    return db


_RAW_CONTROLS = ("\x1b", "\x07", "\x9b", "\r")


def _run_in_process(ctx: Ctx, args: list[str]) -> tuple[int, str, bool]:
    from studio import cli

    result = CliRunner().invoke(cli.app, args, env={"PREFSTUDIO_HOME": str(ctx.studio.home), "COLUMNS": "200"})
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    output = result.output + (f"\n{type(result.exception).__name__}: {result.exception}" if crashed else "")
    return result.exit_code, output, crashed


def _run_process(ctx: Ctx, args: list[str]) -> tuple[int, str, bool]:
    env = dict(os.environ, PREFSTUDIO_HOME=str(ctx.studio.home))
    proc = subprocess.run([prefstudio_bin(), *args], capture_output=True, text=True, env=env, timeout=90)
    return proc.returncode, proc.stdout + proc.stderr, proc.returncode < 0


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_named_and_loses_nothing(case: Case, studio: Studio, can_mount: bool, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if case.mount and not can_mount:
        pytest.skip("needs `mount -t tmpfs` (root) to make a real full or read-only file system")
    monkeypatch.setenv("PREFSTUDIO_HOME", str(studio.home))
    monkeypatch.chdir(tmp_path)
    before_main = db_digest(studio.db)
    victim_before = sorted(p.name for p in studio.victim.iterdir())
    with ExitStack() as mounts:
        ctx = Ctx(studio, tmp_path, mounts, studio.db)
        args = case.args(ctx)
        before = db_digest(ctx.check_db)
        runner = _run_process if case.process else _run_in_process
        code, output, crashed = runner(ctx, args)
        assert not crashed, output
        assert "Traceback" not in output, output
        assert code == case.code, output
        assert case.phrase in output, output
        if code != 0:
            assert "error: " in output, output
        assert not any(ch in output for ch in _RAW_CONTROLS), f"raw control bytes reached the terminal: {output!r}"
        if not case.db_changes:
            assert db_digest(ctx.check_db) == before, "the database changed"
        for check in ctx.after:
            check()
    assert db_digest(studio.db) == before_main, "the studio's database changed"
    assert (studio.db).exists() and sorted(p.name for p in studio.victim.iterdir()) == victim_before


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 60


def _iter_cases() -> Iterator[str]:  # for the report: the ids, one per line
    for param in CASES:
        yield param.id
