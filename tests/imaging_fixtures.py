"""Shared helpers for imaging tests: run the CLI, read outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``scrubin ARGS`` in a subprocess, as a user would run it (no terminal)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "scrubin.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
        cwd=REPO,
    )


def error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one ``error: ...`` line a refused command prints (asserting there is no other)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "Warning" not in result.stderr
    return lines[0]


def load_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def glb_mesh_positions(path: Path) -> dict[str, Any]:
    """POSITION arrays of each named node of a GLB, read with pygltflib (an independent reader)."""
    import numpy as np
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(path))
    blob = gltf.binary_blob()
    out = {}
    for node in gltf.nodes:
        primitive = gltf.meshes[node.mesh].primitives[0]
        accessor = gltf.accessors[primitive.attributes.POSITION]
        view = gltf.bufferViews[accessor.bufferView]
        data = np.frombuffer(blob, np.float32, accessor.count * 3, view.byteOffset + (accessor.byteOffset or 0))
        out[node.name] = data.reshape(-1, 3)
    return out
