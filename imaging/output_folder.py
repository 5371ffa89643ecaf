"""The ``--out`` folder: what may be replaced by a new patient model, and the swap itself.

A folder is replaced only when its own ``manifest.json`` shows it is a complete scrubin
model: the schema, its file list, and every listed file's size and sha256 match. Never the
input, a folder above an input or one inside an input folder; never a folder holding a file
or folder its manifest does not list (named in the refusal as paths under ``out``). ``force`` lets a
scrubin model whose listed files were changed or removed be replaced, nothing else.

The check runs before any work and again just before the swap, and the old model is
removed file by file (only what its manifest lists), so a file copied in meanwhile survives.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imaging.errors import OutputError
from imaging.manifest import MANIFEST_KIND, MANIFEST_NAME, SCHEMA_VERSION, sha256_file

log = logging.getLogger(__name__)

STAGING_PREFIX = ".scrubin-staging-"  # never the --out name: that can carry a patient's name
# What follows the prefix and the process id in a staging folder's name: mkdtemp's random part
# (letters, digits, "_"); the previous model moved aside during a swap adds "-old".
_STAGING_RANDOM = r"[a-z0-9_]+"
MAX_NAMED = 5  # unlisted files named in a refusal; the rest are counted


@dataclass(frozen=True)
class ModelFolder:
    """An existing folder that is a scrubin model by its manifest."""

    listed: tuple[str, ...]  # relative POSIX names of the files the manifest lists
    unlisted: tuple[str, ...]  # files, folders and links it does not list (never replaced)
    mismatched: tuple[str, ...]  # "name: problem" for listed files that changed or are missing


def check_destination(out: Path, inputs: Sequence[Path | None] = (), *, force: bool = False) -> None:
    """Refuse ``out`` unless writing a model there loses nothing scrubin did not write."""
    _check_not_an_input(out, [p for p in inputs if p is not None])
    if out.is_symlink():
        msg = f"{out}: is a symbolic link; give the folder it points to as --out"
        raise OutputError(msg)
    if not out.exists():
        return
    if not out.is_dir():
        msg = f"{out}: exists and is not a folder; refusing to replace it"
        raise OutputError(msg)
    if not any(out.iterdir()):
        return
    model = inspect_model(out)
    if model.unlisted:
        # Quoted as paths under ``out``, never as bare names: a foreign folder's file names can
        # carry a patient's name, and the CLI names paths by role and number (<out>/#3).
        names = ", ".join(str(out / name) for name in model.unlisted[:MAX_NAMED])
        more = f" and {len(model.unlisted) - MAX_NAMED} more" if len(model.unlisted) > MAX_NAMED else ""
        plural = "file" if len(model.unlisted) == 1 else "files"
        msg = (
            f"{out}: holds {len(model.unlisted)} {plural} its manifest does not list ({names}{more}); "
            "refusing to replace it (move them elsewhere, or choose another --out)"
        )
        raise OutputError(msg)
    if model.mismatched and not force:
        msg = (
            f"{out}: a patient model whose files no longer match its manifest ({'; '.join(model.mismatched[:3])}); "
            "refusing to replace it without --force"
        )
        raise OutputError(msg)


def _check_not_an_input(out: Path, inputs: Sequence[Path]) -> None:
    target = out.resolve()
    for given in inputs:
        source = given.resolve()
        if target == source:
            msg = f"{out}: is the input itself; choose another --out folder"
            raise OutputError(msg)
        if target in source.parents:
            msg = f"{out}: holds the input {given}; choose an --out folder outside it"
            raise OutputError(msg)
        if source.is_dir() and source in target.parents:
            msg = f"{out}: is inside the input folder {given}; choose an --out folder outside it"
            raise OutputError(msg)


def inspect_model(folder: Path) -> ModelFolder:
    """Compare ``folder`` with its manifest; ``OutputError`` when it is not a scrubin model."""
    listed = _listed_files(folder)
    files, dirs, others = _walk(folder)
    needed_dirs = {str(parent) for name in listed for parent in PurePosixPath(name).parents} - {"."}
    entries = (files - set(listed) - {MANIFEST_NAME}) | others
    empty_dirs = {d for d in dirs - needed_dirs if not any(e.startswith(f"{d}/") for e in entries)}
    unlisted = sorted(entries | empty_dirs)
    mismatched = [f"{name}: {problem}" for name, problem in _mismatches(folder, listed)]
    return ModelFolder(tuple(sorted(listed)), tuple(unlisted), tuple(mismatched))


def _listed_files(folder: Path) -> dict[str, dict[str, object]]:
    def not_a_model(reason: str) -> OutputError:
        return OutputError(f"{folder}: exists and is not a patient-model folder ({reason}); refusing to replace it")

    manifest_path = folder / MANIFEST_NAME
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise not_a_model(f"no {MANIFEST_NAME}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise not_a_model(f"{MANIFEST_NAME} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise not_a_model(f"{MANIFEST_NAME} is not a scrubin patient-model manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise not_a_model(
            f"{MANIFEST_NAME} has schema version {manifest.get('schema_version')!r:.40}, not {SCHEMA_VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise not_a_model(f"{MANIFEST_NAME} has no file list")
    for name in files:
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or name in ("", MANIFEST_NAME) or str(pure) != name:
            raise not_a_model(f"{MANIFEST_NAME} lists {name!r:.80}, not a file of the model")
    return files


def _walk(folder: Path) -> tuple[set[str], set[str], set[str]]:
    """(regular files, folders, anything else: links, devices...) as relative POSIX names."""
    files: set[str] = set()
    dirs: set[str] = set()
    others: set[str] = set()
    for root, dirnames, filenames in os.walk(folder):  # never descends into linked folders
        base = Path(root).relative_to(folder)
        for name in dirnames + filenames:
            entry, rel = Path(root) / name, (base / name).as_posix()
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                others.add(rel)
            else:
                (files if entry.is_file() else dirs).add(rel)
    return files, dirs, others


def _mismatches(folder: Path, listed: dict[str, dict[str, object]]) -> Iterator[tuple[str, str]]:
    for name, entry in sorted(listed.items()):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            yield name, "missing"
        elif (stat := path.stat()).st_size != entry.get("bytes"):
            yield name, "size differs"
        elif _sha256(str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns) != entry.get("sha256"):
            yield name, "sha256 differs"


@functools.lru_cache(maxsize=1024)
def _sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """A file's sha256, computed again only when its inode, size or mtime changed: the
    destination is checked before the work and again before the swap (~35 ms of hashing
    each for a 200k-triangle model)."""
    return sha256_file(Path(path))


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A private folder next to ``out`` for the new model, removed if it was not swapped in.
    Its name carries this process's id, so that what a killed process left can be found."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(os.getpid()), dir=out.parent))
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _staging_prefix(pid: int) -> str:
    return f"{STAGING_PREFIX}{pid}-"


def remove_staging_left_by(out: Path, pid: int) -> list[Path]:
    """Remove the staging folders that process ``pid`` made next to ``out`` and could not
    remove itself (it was killed); the removed paths.

    Only folders named as ``staging_folder`` names them for that process id; never the
    previous model a swap had moved aside (``...-old``), a link, a file, or anything else.
    Call it once ``pid`` has ended and before it is reaped, so the id is not another's.
    """
    pattern = re.compile(re.escape(_staging_prefix(pid)) + _STAGING_RANDOM)
    try:
        entries = sorted(out.parent.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            log.info("removed %s, the staging folder a stopped prepare left", entry)
    return removed


def replace_folder(staging: Path, out: Path, inputs: Sequence[Path | None] = (), *, force: bool = False) -> None:
    """Swap the finished ``staging`` folder in as ``out``.

    ``out`` is checked again first (files may have been copied in while the model was
    made); the old model is moved aside, the new one renamed into place, and only then
    are the old model's listed files removed.
    """
    check_destination(out, inputs, force=force)
    if not out.exists():
        staging.rename(out)
        return
    old_files = inspect_model(out).listed if any(out.iterdir()) else ()
    old = staging.with_name(f"{staging.name}-old")  # staging's name is unique, so is this one
    out.rename(old)
    staging.rename(out)
    _remove_listed(old, old_files)


def _remove_listed(folder: Path, listed: Sequence[str]) -> None:
    """Remove the listed files and the manifest, then the emptied folders; anything else stays."""
    for name in (*listed, MANIFEST_NAME):
        (folder / name).unlink(missing_ok=True)
    for sub in sorted({PurePosixPath(n).parent for n in listed}, key=lambda p: -len(p.parts)):
        if str(sub) != ".":
            _rmdir_if_empty(folder / sub)
    if not _rmdir_if_empty(folder):
        log.warning("the previous model's folder kept files it did not list: %s", folder)


def _rmdir_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:
        return False
    return True
