"""The headless core never imports the UI (import-linter contracts in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint) if lint.exists() else shutil.which("lint-imports")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_importing_the_core_does_not_load_textual():
    code = "import sys, store, trainers, trainers.prompt_format; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def _contracts() -> dict[str, dict]:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return {contract["name"]: contract for contract in config["contracts"]}


def test_contracts_express_the_layers_of_the_core():
    """The layers issue 11 names are contracts lint-imports checks, not only prose in ARCHITECTURE.md."""
    contracts = list(_contracts().values())
    layers = [c["layers"] for c in contracts if c["type"] == "layers"]
    assert ["studio.cli : studio.tui", "studio.judging | studio.evaluation", "studio.inference"] in layers

    def forbids(sources: set[str], forbidden: set[str]) -> bool:
        return any(c["type"] == "forbidden" and sources <= set(c["source_modules"])
                   and forbidden <= set(c["forbidden_modules"]) for c in contracts)

    assert forbids({"store", "trainers"}, {"studio", "textual"})
    assert forbids({"store"}, {"trainers"})
    assert forbids({"studio.inference"}, {"textual", "typer"})
    assert forbids({"studio.judging", "studio.evaluation"}, {"textual", "typer"})
