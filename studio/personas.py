"""Named personas: system prompts the user saved under a name, to start a session with later.

They live in ``personas.json`` next to the studio database (one file per database, so a test or a second
studio with ``--db`` keeps its own), as ``{"personas": {"name": "system prompt text", ...}}``. The file is
rewritten whole through a temporary file and a rename, so a crash never leaves half of it. The chat's
*current* system prompt needs none of this: every session keeps its own in the store, and a new start
begins with the last one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MAX_NAME_CHARS = 60


class PersonaError(ValueError):
    """The personas file cannot be read or written, or a name is unusable; the message says which."""


def personas_path(db_path: Path) -> Path:
    return Path(db_path).with_name("personas.json")


def load_personas(path: Path) -> dict[str, str]:
    """Saved personas by name, in the order they were saved; none when the file does not exist yet."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise PersonaError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaError(f"{path}: cannot be read ({exc})") from None
    personas = data.get("personas") if isinstance(data, dict) else None
    if not isinstance(personas, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in personas.items()
    ):
        raise PersonaError(f'{path}: expected {{"personas": {{"name": "system prompt", ...}}}}')
    return personas


def save_persona(path: Path, name: str, text: str) -> None:
    """Add or replace the persona ``name``. Raises PersonaError for an unusable name or an unreadable file
    (an unreadable file is never overwritten: the personas in it would be lost)."""
    name = " ".join(name.split())
    if not name:
        raise PersonaError("a persona needs a name")
    if len(name) > MAX_NAME_CHARS:
        raise PersonaError(f"a persona name has at most {MAX_NAME_CHARS} characters ({len(name)} given)")
    if not text.strip():
        raise PersonaError("the system prompt is empty: nothing to save")
    personas = load_personas(path)
    personas[name] = text.strip()
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps({"personas": personas}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PersonaError(f"{path}: cannot be written ({exc})") from None
