"""The distribution ships the `harness` namespace only, with every sub-package listed."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"harness": "harness", "harness.plugins": "plugins", "harness.protocols": "protocols",
          "harness.leaderboards": "leaderboards"}


def _packages_on_disk() -> set[str]:
    found = set()
    for prefix, folder in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((prefix, *rel)))
    return found


def test_every_package_folder_is_listed_in_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk()
    assert meta["tool"]["setuptools"]["package-dir"] == MAPPED


def test_wheel_has_no_generic_top_level_names(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    [wheel] = tmp_path.glob("wsol_harness-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"harness", next(t for t in tops if t.endswith(".dist-info"))}
    assert "harness/plugins/cam_baselines/gradcam.py" in names
    assert "harness/protocols/gt_val.py" in names
    assert "harness/configs/base.py" in names
    assert "harness/leaderboards/colocam/colocam-t1-ytov1.toml" in names
    assert "harness/leaderboards/colocam/paper.toml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[wsol_harness]" in text and "[console_scripts]" in text and "harness = harness.cli:main" in text
