"""docs/replay.ipynb runs top to bottom (nbclient, the project's own venv kernel)."""

from __future__ import annotations

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient


@pytest.mark.slow
def test_replay_notebook_executes() -> None:
    nb = nbformat.read(ROOT / "docs" / "replay.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("observed" in str(o.get("data", o.get("text", ""))) for o in outputs)
