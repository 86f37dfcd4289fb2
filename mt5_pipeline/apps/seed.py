"""The seed's scripts, run as the ``mt5-pipeline`` commands they stand for.

``ml/prepare_dataset.py``, ``ml/train_model.py`` and ``api/run_ea_pusher.py`` are
``mt5-pipeline features``, ``train`` and ``push``. The seed runs them from their own
folders (``cd ml && python train_model.py``), where the relative defaults
(``./data/mt5.db``, ``./models``, ``.env``) would name a second, empty database and a
second model folder. So a script inside a checkout first moves to the project root, the
folder holding ``setup.py``: it then reads the same ``.env``, database and models as
``mt5-pipeline`` run from the root, whatever directory it was started from. A script
installed from the wheel (``.venv/bin/run_ea_pusher.py``) has no checkout around it and
keeps the current directory, as ``mt5-pipeline`` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mt5_pipeline.apps.cli import main


def project_root(script: str | Path) -> Path | None:
    """The checkout a seed script lives in (``<root>/ml/x.py`` → ``<root>``), or None."""
    root = Path(script).resolve().parent.parent
    if (root / "setup.py").is_file() and (root / "mt5_pipeline").is_dir():
        return root
    return None


def run_seed_script(script: str | Path, command: Sequence[str]) -> int:
    root = project_root(script)
    if root is not None:
        os.chdir(root)

    return main(list(command))
