"""The studio's SQLite store: schema, migrations, records, preference pairs and their export.

Headless by design: nothing here imports the app (`studio`), the trainers or Textual.
"""

from store.datasets.export import write_pairs_jsonl
from store.errors import (
    RecordNotFoundError,
    SchemaTooNewError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreUnwritableError,
)
from store.pairs import PreferencePair, read_pairs
from store.records import (
    CandidateRecord,
    JudgementRecord,
    RunRecord,
    SessionRecord,
    TurnRecord,
    Verdict,
)
from store.schema import SCHEMA_VERSION
from store.studio_store import Store

__all__ = [
    "SCHEMA_VERSION",
    "CandidateRecord",
    "JudgementRecord",
    "PreferencePair",
    "RecordNotFoundError",
    "RunRecord",
    "SchemaTooNewError",
    "SessionRecord",
    "Store",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreUnwritableError",
    "TurnRecord",
    "Verdict",
    "read_pairs",
    "write_pairs_jsonl",
]
