"""Long-running fuzzing of every decoder that takes bytes from outside (issue 7).

    .venv/bin/python bench/fuzz_atheris.py                     # every target, 60 s each
    .venv/bin/python bench/fuzz_atheris.py --quick             # every target, 5 s each
    .venv/bin/python bench/fuzz_atheris.py --target protocol_decode --seconds 3600
    .venv/bin/python bench/fuzz_atheris.py --engine random     # without atheris

With atheris (``pip install atheris``; coverage-guided libFuzzer) each target runs in its own
process under ``-max_total_time``; without it (or with ``--engine random``) the same targets
get random and mutated bytes. A target may raise only the project's own error for that input
(counted by type); anything else is a crash: the input is saved under
``bench/results/fuzz-crashes/`` and the run fails. Results: ``bench/results/fuzz.json`` and
``fuzz.png`` (executions per second and per target).

Targets whose crash is already known and open (see docs/reliability.md) are in
``OPEN_TARGETS`` and run only when named with ``--target``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
CRASHES = RESULTS / "fuzz-crashes"
ERRORS: Counter[str] = Counter()  # project errors seen, by type (the expected outcome)


@cache
def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="scrubin-fuzz-"))


def _frames(data: bytes) -> list[bytes]:
    """Split fuzz bytes into ZeroMQ frames at 0xFF 0x00 markers (at most 5)."""
    return data.split(b"\xff\x00", 4)


def protocol_decode(data: bytes) -> None:
    from headset_bridge import protocol as P

    for allowed in (None, P.UPLINK_TYPES):
        try:
            P.decode(_frames(data), allowed)
        except P.ProtocolError:
            ERRORS["ProtocolError"] += 1


def annotation_json(data: bytes) -> None:
    from headset_bridge.messages import Annotation, AnnotationOp

    try:
        value = json.loads(data)
    except ValueError:
        return  # not JSON: never reaches the annotation decoders (the protocol layer drops it)
    for decode in (Annotation.from_json, AnnotationOp.from_json):
        try:
            decode(value)
        except ValueError:
            ERRORS["ValueError"] += 1


def token_verify(data: bytes) -> None:
    from mentor.tokens import TokenError, verify

    try:
        # latin-1: every byte is a character, as an HTTP header or query string can carry it
        verify(b"k" * 32, data.decode("latin-1"), "session")
    except TokenError:
        ERRORS["TokenError"] += 1


def token_verify_unicode(data: bytes) -> None:
    """Open: lone surrogates (JSON '\\ud800' escapes) raise UnicodeEncodeError today."""
    from mentor.tokens import TokenError, verify

    try:
        verify(b"k" * 32, data.decode("utf-8", "surrogateescape"), "session")
    except TokenError:
        ERRORS["TokenError"] += 1


def dicom_header(data: bytes) -> None:
    from imaging import dicom_fast, dicom_series
    from imaging.errors import InputError

    path = _scratch() / "slice.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + data)
    dicom_fast.read_fast_header(path)  # returns None when unsure; must never raise
    dicom_fast.is_dicomdir(path)
    try:
        dicom_series._read_header(path)  # pydicom: in production inside imaging.guarded's child
    except InputError:
        ERRORS["InputError"] += 1


def nifti_header(data: bytes) -> None:
    from imaging.truncation import metaimage_truncation, nifti_truncation

    for name, check in (("image.nii", nifti_truncation), ("image.mha", metaimage_truncation)):
        path = _scratch() / name
        path.write_bytes(data)
        check(path)  # a reason string or None; must never raise


def manifest(data: bytes) -> None:
    """Open: from_folder raises AttributeError/TypeError on wrongly shaped JSON today."""
    from registration import SurfaceModel

    folder = _scratch() / "model"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_bytes(data)
    try:
        SurfaceModel.from_folder(folder)
    except (ValueError, KeyError):
        ERRORS["ValueError"] += 1


TARGETS: dict[str, Callable[[bytes], None]] = {
    "protocol_decode": protocol_decode,
    "annotation_json": annotation_json,
    "token_verify": token_verify,
    "dicom_header": dicom_header,
    "nifti_header": nifti_header,
}
OPEN_TARGETS: dict[str, Callable[[bytes], None]] = {
    "manifest": manifest,
    "token_verify_unicode": token_verify_unicode,
}
SEEDS = [
    b'pose\xff\x00{"v":1,"type":"pose","seq":1,"t_ns":1}\xff\x00',
    b'hb\xff\x00{"v":1,"type":"hb","seq":1,"t_ns":1,"ann_seq":0,"pose_seq":0,"model_sha256":null,"offset_ns":0,"rtt_ns":0}\xff\x00',
    b'{"seq":1,"op":"add","id":"a","annotation":{"id":"a","rev":0,"kind":"point","author":"m","role":"mentor","points_mm":[[1,2,3]],"created_ns":1}}',
    b"eyJzIjoic2Vzc2lvbiJ9.c2lnbmF0dXJl",
    b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00",
    b"\x5c\x01\x00\x00" + b"\0" * 36 + b"\x03\x00\x10\x00\x10\x00\x06\x00" + b"\0" * 300 + b"n+1\0",
    b'{"schema_version":1,"units":"mm","meshes":[{"name":"skin","files":{"ply":"x.ply"}}]}',
]


# --------------------------------------------------------------------- engines
def _crash(name: str, data: bytes, exc: BaseException) -> None:
    CRASHES.mkdir(parents=True, exist_ok=True)
    path = CRASHES / f"{name}-{int(time.time() * 1000)}.bin"
    path.write_bytes(data)
    print(f"CRASH in {name}: {exc.__class__.__name__}: {exc} (input saved to {path})", flush=True)


def run_random(name: str, seconds: float, seed: int = 1) -> dict[str, object]:
    """Random bytes and mutated seeds (no coverage guidance): the fallback engine."""
    import random

    target = {**TARGETS, **OPEN_TARGETS}[name]
    rng = random.Random(seed)
    execs, crashes, start = 0, 0, time.monotonic()
    while time.monotonic() - start < seconds:
        if rng.random() < 0.5:
            data = bytearray(rng.choice(SEEDS))
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data) + 1)
                data[i:i] = bytes([rng.randrange(256)]) if rng.random() < 0.5 else b""
                if data and rng.random() < 0.5:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            blob = bytes(data)
        else:
            blob = rng.randbytes(rng.randrange(0, 400))
        try:
            target(blob)
        except Exception as exc:  # anything but the project's own error is a finding
            crashes += 1
            _crash(name, blob, exc)
        execs += 1
    elapsed = time.monotonic() - start
    return {
        "target": name,
        "engine": "random",
        "execs": execs,
        "seconds": elapsed,
        "crashes": crashes,
        "errors": dict(ERRORS),
    }


def run_atheris_child(name: str, seconds: float) -> None:
    """This process becomes one libFuzzer run (atheris exits the process at the end)."""
    import atheris

    with atheris.instrument_imports():
        import headset_bridge.messages  # noqa: F401
        import headset_bridge.protocol  # noqa: F401
        import imaging.dicom_fast  # noqa: F401
        import imaging.truncation  # noqa: F401
        import mentor.tokens  # noqa: F401
    target = {**TARGETS, **OPEN_TARGETS}[name]
    corpus = _scratch() / f"corpus-{name}"
    corpus.mkdir(exist_ok=True)
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    CRASHES.mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], f"-max_total_time={int(seconds)}", f"-artifact_prefix={CRASHES}/{name}-", str(corpus)]
    atheris.Setup(args, target)
    atheris.Fuzz()


def run_atheris(name: str, seconds: float) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--atheris-child", name, "--seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    done = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", proc.stderr)
    result: dict[str, object] = {"target": name, "engine": "atheris", "crashes": 0, "errors": {}}
    result["execs"], result["seconds"] = (int(done[1]), float(done[2])) if done else (0, seconds)
    result["coverage_edges"], result["features"] = (int(cov[-1][0]), int(cov[-1][1])) if cov else (0, 0)
    if proc.returncode != 0:
        result["crashes"] = 1
        tail = (proc.stderr or proc.stdout)[-1500:]
        print(f"CRASH in {name} (atheris exit {proc.returncode}):\n{tail}", flush=True)
    return result


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _plot(results: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["target"]) for r in results]
    rates = [float(r["execs"]) / max(float(r["seconds"]), 1e-9) for r in results]  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colours = ["tab:red" if r.get("crashes") else "tab:green" for r in results]
    ax.barh(names, rates, color=colours)
    ax.set_xlabel("executions per second (red: crashed)")
    ax.set_title(f"fuzzing, engine {results[0]['engine'] if results else '?'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", help="a target name (repeatable); default: every closed target")
    ap.add_argument("--seconds", type=float, default=60.0, help="per target")
    ap.add_argument("--quick", action="store_true", help="5 s per target")
    ap.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    ap.add_argument("--atheris-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.atheris_child:
        run_atheris_child(args.atheris_child, args.seconds)
        return 0
    seconds = 5.0 if args.quick else args.seconds
    names = args.target or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS and n not in OPEN_TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r}; choose from {sorted({**TARGETS, **OPEN_TARGETS})}")
    engine = "atheris" if args.engine == "atheris" or (args.engine == "auto" and _have_atheris()) else "random"
    results = []
    for name in names:
        ERRORS.clear()
        result = run_atheris(name, seconds) if engine == "atheris" else run_random(name, seconds)
        rate = float(result.get("execs", 0)) / max(float(result.get("seconds", 0) or 1e-9), 1e-9)  # type: ignore[arg-type]
        print(
            f"{name:22s} {engine:8s} {result.get('execs', 0):>9} execs {rate:>9.0f}/s  crashes {result.get('crashes', 0)}  project errors {result.get('errors', {})}"
        )
        results.append(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(results, RESULTS / "fuzz.png")
    print(f"wrote {RESULTS / 'fuzz.json'} and fuzz.png")
    return 1 if any(r.get("crashes") for r in results) else 0


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")  # pydicom warns on every malformed element
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # and so it does in the atheris children
    sys.exit(main())
