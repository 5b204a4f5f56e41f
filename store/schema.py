"""The store's schema: ordered migrations and the version recorded in the `meta` table.

`MIGRATIONS[i]` takes a database from version i to i + 1. Each runs in its own transaction together
with the version bump, so a crash mid-upgrade leaves the file at the last complete version.
"""

from collections.abc import Callable

import sqlite_utils

from store.errors import SchemaTooNewError, StoreCorruptError
from store.transactions import database_file, write_transaction

SCHEMA_VERSION = 7

_VERSION_KEY = "schema_version"


def _create_v1(db: sqlite_utils.Database) -> None:
    """Version 1: sessions, their turns and prompts, candidates, judgements, runs and run metrics."""
    db["sessions"].create(
        {"id": int, "created_at": str, "title": str, "system_prompt": str, "model_id": str},
        pk="id",
        not_null=["created_at", "system_prompt"],
    )
    db["prompts"].create(
        {"id": int, "session_id": int, "text": str, "history_json": str, "created_at": str},
        pk="id",
        not_null=["session_id", "text", "history_json", "created_at"],
        foreign_keys=[("session_id", "sessions", "id")],
    )
    db["candidates"].create(
        {
            "id": int,
            "prompt_id": int,
            "slot": int,
            "text": str,
            "rendered_prompt": str,
            "model_id": str,
            "model_sha256": str,
            "adapter": str,
            "sampling_json": str,
            "seed": int,
            "finish_reason": str,
            "n_tokens": int,
            "duration_s": float,
            "created_at": str,
        },
        pk="id",
        not_null=[
            "prompt_id",
            "slot",
            "text",
            "rendered_prompt",
            "model_id",
            "model_sha256",
            "sampling_json",
            "seed",
            "created_at",
        ],
        foreign_keys=[("prompt_id", "prompts", "id")],
    )
    db["turns"].create(
        {
            "id": int,
            "session_id": int,
            "idx": int,
            "role": str,
            "content": str,
            "candidate_id": int,
            "created_at": str,
        },
        pk="id",
        not_null=["session_id", "idx", "role", "content", "created_at"],
        foreign_keys=[("session_id", "sessions", "id"), ("candidate_id", "candidates", "id")],
    )
    db["judgements"].create(
        {
            "id": int,
            "prompt_id": int,
            "verdict": str,
            "chosen_candidate_id": int,
            "rejected_candidate_id": int,
            "edited_text": str,
            "source": str,
            "adapter": str,
            "created_at": str,
        },
        pk="id",
        not_null=["prompt_id", "verdict", "source", "created_at"],
        foreign_keys=[
            ("prompt_id", "prompts", "id"),
            ("chosen_candidate_id", "candidates", "id"),
            ("rejected_candidate_id", "candidates", "id"),
        ],
    )
    db["runs"].create(
        {
            "id": int,
            "created_at": str,
            "updated_at": str,
            "status": str,
            "message": str,
            "pid": int,
            "config_json": str,
            "model_id": str,
            "dataset_hash": str,
            "pair_ids_json": str,
            "heldout_ids_json": str,
            "output_dir": str,
            "summary_json": str,
        },
        pk="id",
        not_null=[
            "created_at",
            "updated_at",
            "status",
            "config_json",
            "model_id",
            "pair_ids_json",
            "heldout_ids_json",
            "output_dir",
        ],
    )
    db["run_metrics"].create(
        {"id": int, "run_id": int, "step": int, "epoch": float, "metrics_json": str, "created_at": str},
        pk="id",
        not_null=["run_id", "step", "metrics_json", "created_at"],
        foreign_keys=[("run_id", "runs", "id")],
    )
    # Indexes follow the reads: a session's prompts and turns, a prompt's candidates and judgements,
    # a run's metrics in step order. The unique turn index also stops two writers giving the same idx.
    db["prompts"].create_index(["session_id"])
    db["candidates"].create_index(["prompt_id", "slot"])
    db["turns"].create_index(["session_id", "idx"], unique=True)
    db["turns"].create_index(["candidate_id"])
    db["judgements"].create_index(["prompt_id"])
    db["judgements"].create_index(["chosen_candidate_id"])
    db["judgements"].create_index(["rejected_candidate_id"])
    db["runs"].create_index(["status"])
    db["run_metrics"].create_index(["run_id", "step"])


def _add_evaluations_v2(db: sqlite_utils.Database) -> None:
    """Version 2: blind comparison votes and before/after evaluations, both kept with their run."""
    db["comparison_votes"].create(
        {
            "id": int,
            "run_id": int,
            "prompt": str,
            "seed": int,
            "tuned_on_left": int,
            "vote": str,
            "left_text": str,
            "right_text": str,
            "created_at": str,
        },
        pk="id",
        not_null=["run_id", "prompt", "tuned_on_left", "vote", "created_at"],
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["run_evaluations"].create(
        {"id": int, "run_id": int, "kind": str, "result_json": str, "created_at": str},
        pk="id",
        not_null=["run_id", "kind", "result_json", "created_at"],
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["comparison_votes"].create_index(["run_id"])
    db["run_evaluations"].create_index(["run_id", "kind"])


def _add_datasets_v3(db: sqlite_utils.Database) -> None:
    """Version 3: imported datasets — labelled stance items, test prompts and preference pairs.

    Each item table is unique on (dataset_id, content_hash): the hash covers a record's content, not
    its id, so importing the same file twice adds nothing and a re-import adds only what is new.
    """
    db["datasets"].create(
        {"id": int, "name": str, "kind": str, "format": str, "source_path": str, "created_at": str},
        pk="id",
        not_null=["name", "kind", "format", "created_at"],
    )
    db["dataset_stance_items"].create(
        {
            "id": int,
            "dataset_id": int,
            "item_key": str,
            "prompt": str,
            "support": str,
            "oppose": str,
            "content_hash": str,
        },
        pk="id",
        not_null=["dataset_id", "item_key", "prompt", "support", "oppose", "content_hash"],
        foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db["dataset_test_prompts"].create(
        {"id": int, "dataset_id": int, "item_key": str, "prompt": str, "content_hash": str},
        pk="id",
        not_null=["dataset_id", "item_key", "prompt", "content_hash"],
        foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db["dataset_pairs"].create(
        {
            "id": int,
            "dataset_id": int,
            "prompt": str,
            "chosen": str,
            "rejected": str,
            "prompt_messages_json": str,
            "content_hash": str,
        },
        pk="id",
        not_null=["dataset_id", "prompt", "chosen", "rejected", "content_hash"],
        foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db["datasets"].create_index(["name"], unique=True)
    # The unique (dataset_id, content_hash) indexes also serve "this dataset's rows" reads.
    for table in ("dataset_stance_items", "dataset_test_prompts", "dataset_pairs"):
        db[table].create_index(["dataset_id", "content_hash"], unique=True)


def _dataset_storage_v4(db: sqlite_utils.Database) -> None:
    """Version 4: imported pairs live in Arrow batches; dataset rows are indexed by dataset only.

    A row per imported pair, under a unique (dataset_id, content_hash) index, made a 100k-pair import
    cost several times reading the file (see store/datasets/pair_batches.py). Pairs move into
    `dataset_pair_batches`, keeping their ids (a run's held-out ids name them), with digests of the new
    form. Stance items and test prompts stay rows (a few hundred per exercise) but lose the unique
    index too: every import reads a dataset's digests once, inside its write transaction, and skips
    what it has seen.
    """
    import pyarrow as pa

    from store.datasets import pair_batches

    db["dataset_pair_batches"].create(
        {"id": int, "dataset_id": int, "first_pair_id": int, "last_pair_id": int, "n_pairs": int, "arrow": bytes},
        pk="id",
        not_null=["dataset_id", "first_pair_id", "last_pair_id", "n_pairs", "arrow"],
        foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db["dataset_pair_batches"].create_index(["dataset_id"])
    db["dataset_pair_batches"].create_index(["last_pair_id"])
    cursor = db.execute("SELECT dataset_id, id, prompt, chosen, rejected, prompt_messages_json FROM dataset_pairs "
                        "ORDER BY dataset_id, id")
    while rows := cursor.fetchmany(pair_batches.ROWS_PER_BATCH):
        for dataset_id in dict.fromkeys(row[0] for row in rows):
            mine = [row[1:] for row in rows if row[0] == dataset_id]
            ids, *texts = zip(*mine, strict=True)
            batch = pair_batches.text_batch(*texts)
            stored = pair_batches.stored_batch(batch, 0, pair_batches.batch_digests(batch))
            stored = stored.set_column(0, "pair_id", pa.array(ids, pa.int64()))
            db.execute(
                "INSERT INTO dataset_pair_batches (dataset_id, first_pair_id, last_pair_id, n_pairs, arrow) "
                "VALUES (?, ?, ?, ?, ?)", [dataset_id, min(ids), max(ids), len(ids), pair_batches.encode(stored)])
    db.execute("DROP TABLE dataset_pairs")
    for table in ("dataset_stance_items", "dataset_test_prompts"):
        db.execute(f"DROP INDEX IF EXISTS idx_{table}_dataset_id_content_hash")
        db[table].create_index(["dataset_id"], find_unique_name=True)


# The import tables version 5 tagged with their import; version 6 adds dataset_feedback_items, created tagged.
_V5_IMPORT_TABLES = ("dataset_pair_batches", "dataset_stance_items", "dataset_test_prompts")
IMPORT_DATA_TABLES = (*_V5_IMPORT_TABLES, "dataset_feedback_items")


def _staged_imports_and_process_identity_v5(db: sqlite_utils.Database) -> None:
    """Version 5: imports staged outside one long transaction; turns know their judgement; a run's pid
    comes with its process's start time.

    An import used to hold the write lock while it read the whole file (13 s for a 470 MB file: every
    other writer failed). Now it writes its rows in short transactions, each row tagged with its
    `dataset_imports` row, and they stay invisible while that import's state is 'staging'; one tiny
    UPDATE to 'done' makes them all visible at once. A killed import leaves invisible rows that the
    next import deletes. At most one import of a dataset name is staging at a time (a partial unique
    index), which keeps the dataset's duplicate check exact. The columns are added without a default,
    so existing rows (NULL) stay visible and nothing is rewritten.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS dataset_imports (id INTEGER PRIMARY KEY, dataset_name TEXT NOT NULL, "
        "state TEXT NOT NULL, pid INTEGER, pid_started TEXT, source_path TEXT, created_at TEXT NOT NULL, "
        "finished_at TEXT)"
    )
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_dataset_imports_staging_name ON dataset_imports (dataset_name) "
               "WHERE state = 'staging'")
    # `datasets.import_id`: the import that created the dataset row, hidden until that import is done.
    for table in ("datasets", *_V5_IMPORT_TABLES):
        _add_column(db, table, "import_id", "INTEGER REFERENCES dataset_imports(id)", indexed=True)
    _add_column(db, "turns", "judgement_id", "INTEGER REFERENCES judgements(id)", indexed=True)
    _add_column(db, "runs", "pid_started", "TEXT")


def _feedback_kinds_v6(db: sqlite_utils.Database) -> None:
    """Version 6: every kind of feedback — rankings, good/bad labels, attribute ratings, demonstrations —
    and imported datasets of those kinds.

    A ranking and a label are judgements (new verdicts 'ranked', 'all_bad', 'good', 'bad'; the verdict
    column is free text, so the judgements table is unchanged): a label names its candidate as the chosen
    (good) or the rejected (bad) one, and a ranking's place for each candidate of its prompt is a row of
    `judgement_ranks` (0 = best; candidates left out of a partial ranking share the last place). Ratings
    (0–4 per attribute) and demonstrations (a reply the user wrote) are rows of their own, with or
    without a judgement. Imported labels, demonstrations, ratings and rankings are one JSON row each in
    `dataset_feedback_items` (the pair tables keep pairs), staged like every import table. `queue_items` holds the
    labelling queue's prompts until their candidates exist. Only new tables: nothing existing is rewritten.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS judgement_ranks (judgement_id INTEGER NOT NULL REFERENCES judgements(id), "
        "candidate_id INTEGER NOT NULL REFERENCES candidates(id), rank INTEGER NOT NULL CHECK (rank >= 0), "
        "PRIMARY KEY (judgement_id, candidate_id))"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_judgement_ranks_candidate_id ON judgement_ranks (candidate_id)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS candidate_ratings (id INTEGER PRIMARY KEY, "
        "candidate_id INTEGER NOT NULL REFERENCES candidates(id), judgement_id INTEGER REFERENCES judgements(id), "
        "attribute TEXT NOT NULL CHECK (length(attribute) > 0), "
        "value INTEGER NOT NULL CHECK (value BETWEEN 0 AND 4), source TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_candidate_ratings_candidate_id ON candidate_ratings (candidate_id)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_candidate_ratings_judgement_id ON candidate_ratings (judgement_id)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS demonstrations (id INTEGER PRIMARY KEY, "
        "prompt_id INTEGER NOT NULL REFERENCES prompts(id), text TEXT NOT NULL, "
        "based_on_candidate_id INTEGER REFERENCES candidates(id), source TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_demonstrations_prompt_id ON demonstrations (prompt_id)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS dataset_feedback_items (id INTEGER PRIMARY KEY, "
        "dataset_id INTEGER NOT NULL REFERENCES datasets(id), item_json TEXT NOT NULL, content_hash TEXT NOT NULL, "
        "import_id INTEGER REFERENCES dataset_imports(id))"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_dataset_feedback_items_dataset_id ON dataset_feedback_items (dataset_id)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_dataset_feedback_items_import_id ON dataset_feedback_items (import_id)")
    # The labelling queue (store/labelling_queue.py): prompts waiting for their candidates. A queue is a session;
    # an item's prompt_id is set, in the transaction that stores the prompt and its candidates, once generated.
    db.execute(
        "CREATE TABLE IF NOT EXISTS queue_items (id INTEGER PRIMARY KEY, "
        "session_id INTEGER NOT NULL REFERENCES sessions(id), text TEXT NOT NULL CHECK (length(trim(text)) > 0), "
        "n_candidates INTEGER NOT NULL CHECK (n_candidates BETWEEN 1 AND 4), origin TEXT NOT NULL, "
        "prompt_id INTEGER UNIQUE REFERENCES prompts(id), created_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_queue_items_session_id ON queue_items (session_id)")


def _checks_and_scores_v7(db: sqlite_utils.Database) -> None:
    """Version 7: what a safety checker said about a reply, and what a reward model scored a candidate.

    `safety_checks` is keyed by the checker (name and version) and the hash of what it read (the conversation and
    the reply), so the same text is never checked twice by the same checker, whichever candidate or comparison
    answer it came from; `candidate_id` links a check made on a candidate (NULL for a comparison answer or a file).
    `reward_scores`: a reward-model run's score for a candidate, one row per (candidate, run); whether the user
    agreed with the model's pick is read from these scores and the judgement, so nothing is stored twice.
    `predicted_ratings`: an attribute model's predicted values (store/predicted_ratings.py).
    Only new tables: nothing existing is rewritten.
    """
    db.execute(
        "CREATE TABLE IF NOT EXISTS safety_checks (id INTEGER PRIMARY KEY, checker TEXT NOT NULL, "
        "checker_version TEXT NOT NULL, text_hash TEXT NOT NULL, safe INTEGER NOT NULL CHECK (safe IN (0, 1)), "
        "categories_json TEXT NOT NULL DEFAULT '[]', score REAL, created_at TEXT NOT NULL, "
        "UNIQUE (checker, checker_version, text_hash))"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS candidate_safety (candidate_id INTEGER NOT NULL REFERENCES candidates(id), "
        "check_id INTEGER NOT NULL REFERENCES safety_checks(id), PRIMARY KEY (candidate_id, check_id))"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_candidate_safety_check_id ON candidate_safety (check_id)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS reward_scores (candidate_id INTEGER NOT NULL REFERENCES candidates(id), "
        "run_id INTEGER NOT NULL REFERENCES runs(id), score REAL NOT NULL, created_at TEXT NOT NULL, "
        "PRIMARY KEY (candidate_id, run_id))"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_reward_scores_run_id ON reward_scores (run_id)")
    # An attribute model's predictions (SteerLM annotate), never mixed with the human `candidate_ratings`: one
    # row per (target, attribute, run); the target a candidate, a written demonstration, an edited judgement's
    # edit or an imported dataset item (`dataset_feedback_items`).
    db.execute(
        "CREATE TABLE IF NOT EXISTS predicted_ratings (id INTEGER PRIMARY KEY, target_kind TEXT NOT NULL "
        "CHECK (target_kind IN ('candidate', 'demonstration', 'edit', 'dataset_item')), target_id INTEGER NOT NULL, "
        "attribute TEXT NOT NULL, value REAL NOT NULL, run_id INTEGER NOT NULL REFERENCES runs(id), "
        "created_at TEXT NOT NULL, UNIQUE (target_kind, target_id, attribute, run_id))"
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_predicted_ratings_run_id ON predicted_ratings (run_id)")


def _add_column(db: sqlite_utils.Database, table: str, column: str, declaration: str, indexed: bool = False) -> None:
    # Idempotent: a file whose recorded version was set back (restored from a copy, or by hand to replay
    # an upgrade) may already carry the column, and adding it twice would fail the whole upgrade.
    if column not in db[table].columns_dict:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    if indexed:
        db.execute(f"CREATE INDEX IF NOT EXISTS idx_{table}_{column} ON {table} ({column})")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _create_v1,
    _add_evaluations_v2,
    _add_datasets_v3,
    _dataset_storage_v4,
    _staged_imports_and_process_identity_v5,
    _feedback_kinds_v6,
    _checks_and_scores_v7,
]

assert len(MIGRATIONS) == SCHEMA_VERSION, "one migration per schema version"


def schema_version(db: sqlite_utils.Database) -> int:
    """The version recorded in the file; 0 for a file the studio has never migrated."""
    if not db["meta"].exists():
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = ?", [_VERSION_KEY]).fetchone()
    if row is None:
        return 0
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise StoreCorruptError(
            f"{database_file(db)} records an unreadable schema version ({row[0]!r}). "
            "Pass --db to use another file."
        ) from None


def _check_not_foreign(db: sqlite_utils.Database) -> None:
    # An unversioned file that already has tables is someone else's database: migrating it would
    # mix our tables into theirs (or fail half-way on a name clash), so refuse it by name instead.
    others = [name for name in db.table_names() if name != "meta"]
    if others:
        raise StoreCorruptError(
            f"{database_file(db)} is an SQLite database but not a Preference Studio one "
            f"(it has tables {', '.join(sorted(others)[:5])}). Pass --db to use another file."
        )


def migrate(db: sqlite_utils.Database) -> int:
    """Bring the file up to `SCHEMA_VERSION`, one transaction per migration; return the version.

    Raises SchemaTooNewError when the file was written by a newer Preference Studio.
    """
    version = schema_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"{database_file(db)} was written by a newer Preference Studio (schema {version}; "
            f"this one knows {SCHEMA_VERSION}). Upgrade, or pass --db to use another file."
        )
    while version < SCHEMA_VERSION:
        with write_transaction(db):
            # Re-read under the write lock: another process opening the same new file may have
            # applied this migration while we waited.
            version = schema_version(db)
            if version >= SCHEMA_VERSION:
                break
            if version == 0:
                _check_not_foreign(db)
                db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            MIGRATIONS[version](db)
            version += 1
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [_VERSION_KEY, str(version)],
            )
    return version
