"""Make distributions visible to importlib.metadata the way pip would: a ``*.dist-info``
folder with ``entry_points.txt`` next to the importable module, on ``sys.path``."""
from __future__ import annotations

from pathlib import Path


def fake_distribution(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[wsol_harness]\n{ep_name or module} = {module}\n")
    return root
