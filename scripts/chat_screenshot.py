"""Redraw docs/studio-chat.svg: the chat screen on the embedded model, one exchange judged and the next
question pending with its two candidates. Run from the repository root:

    .venv/bin/python scripts/chat_screenshot.py [OUT.svg]

Everything happens in a temporary PREFSTUDIO_HOME (the embedded model is assembled there once).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

SYSTEM = "You are the help desk assistant of a small public library. Answer briefly and warmly."


async def draw(out: Path, home: Path) -> None:
    from store.studio_store import Store
    from studio.inference.engine import SamplingSettings
    from studio.inference.model_files import ensure_default_model
    from studio.settings import load_settings
    from studio.tui.app import PreferenceStudioApp

    model = ensure_default_model()
    with Store.open(home / "studio.db") as store:
        settings = replace(load_settings(), model=model, seed=7, system_prompt=SYSTEM,
                           sampling=SamplingSettings(max_tokens=40))
        app = PreferenceStudioApp(settings=settings, store=store)
        async with app.run_test(size=(120, 36)) as pilot:
            async def until(condition) -> None:  # noqa: ANN001
                while not condition():
                    await pilot.pause(0.1)

            await until(lambda: app.engine is not None and app.chat.state == "input")
            for question, key in (("When does the library open on Saturdays?", "1"),
                                  ("Can I borrow e-books from home?", None)):
                app.chat.query_one("#prompt-input").value = question
                await pilot.press("enter")
                await until(lambda: app.chat.state == "judging")
                if key:
                    await pilot.press(key)
                    await until(lambda: app.chat.state == "input")
            await pilot.pause(0.5)
            app.save_screenshot(filename=out.name, path=str(out.parent))


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/studio-chat.svg").resolve()
    with tempfile.TemporaryDirectory() as home:
        os.environ["PREFSTUDIO_HOME"] = home
        asyncio.run(draw(out, Path(home)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
