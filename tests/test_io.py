"""Atomic writes keep the permissions a plain write would give."""
import os
import stat

from harness import io


def test_atomic_write_gets_the_umask_mode_not_a_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "result.json", "{}")
        io.write_json(tmp_path / "deep" / "x.json", {"a": 1})
    finally:
        os.umask(old)
    for p in (tmp_path / "result.json", tmp_path / "deep" / "x.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
