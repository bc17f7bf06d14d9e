"""scripts/check_dist.py: a wheel or sdist that lacks a package file fails CI."""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "scalekit_check_dist_script", ROOT / "scripts" / "check_dist.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check_dist = _load_script()
NEEDED: list[str] = check_dist.needed_files()
METADATA = "Metadata-Version: 2.4\nName: scalekit-blocks\nVersion: 0\n"
ENTRY_POINTS = "[pytest11]\nscalekit = scalekit.testing._plugin\n"


def _wheel(tmp: Path, files: list[str], name: str = "scalekit-blocks") -> Path:
    wheel = tmp / "scalekit_blocks-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file in files:
            archive.writestr(file, "")
        archive.writestr(
            "scalekit_blocks-0.dist-info/METADATA", METADATA.replace("scalekit-blocks", name)
        )
        archive.writestr("scalekit_blocks-0.dist-info/entry_points.txt", ENTRY_POINTS)
    return wheel


def _sdist(tmp: Path, files: list[str]) -> Path:
    sdist = tmp / "scalekit_blocks-0.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for file in files:
            info = tarfile.TarInfo(f"scalekit_blocks-0/src/{file}")
            archive.addfile(info, io.BytesIO(b""))
    return sdist


def test_the_source_tree_has_lua_files_and_py_typed() -> None:
    assert "scalekit/py.typed" in NEEDED
    assert "scalekit/ratelimit/_lua/gcra.lua" in NEEDED
    assert "scalekit/breaker/_lua/breaker.lua" in NEEDED


def test_complete_archives_pass(tmp_path: Path) -> None:
    _wheel(tmp_path, NEEDED)
    _sdist(tmp_path, NEEDED)
    assert check_dist.main([str(tmp_path)]) == 0


def test_a_wheel_without_py_typed_or_a_lua_file_fails(tmp_path: Path) -> None:
    lua = "scalekit/retry/_lua/budget.lua"
    files = [f for f in NEEDED if f not in ("scalekit/py.typed", lua)]
    problems = check_dist.check_wheel(_wheel(tmp_path, files), NEEDED)
    assert sorted(problems) == sorted(
        f"scalekit_blocks-0-py3-none-any.whl: missing {name}" for name in ("scalekit/py.typed", lua)
    )


def test_a_wheel_under_another_name_fails(tmp_path: Path) -> None:
    problems = check_dist.check_wheel(_wheel(tmp_path, NEEDED, name="scalekit"), NEEDED)
    assert problems == [
        "scalekit_blocks-0-py3-none-any.whl: METADATA does not name scalekit-blocks"
    ]


def test_an_sdist_without_a_lua_file_fails(tmp_path: Path) -> None:
    lua = "scalekit/ratelimit/_lua/gcra.lua"
    sdist = _sdist(tmp_path, [f for f in NEEDED if f != lua])
    assert check_dist.check_sdist(sdist, NEEDED) == [f"scalekit_blocks-0.tar.gz: missing src/{lua}"]
