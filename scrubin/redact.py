"""Identifiers out of terminal lines and logs: paths named by their role, UIDs by pseudonym.

A folder exported from PACS is often named after the patient, and its files after DICOM
UIDs. Messages from the libraries quote paths as given, so the command line's own paths are
replaced where they appear: ``<input>`` (and ``<input>/#12``, the 12th entry of the folder
in name order; ``<out>/#3/#1``, the first entry of its third), ``<labels>``,
``<label-names>``, ``<out>``. Anything shaped like a DICOM UID becomes its keyed pseudonym (``uid-<16 hex>``, see ``imaging.deid``). ``show_paths`` keeps
the paths for an operator on a local terminal; UIDs are never shown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imaging.deid import pseudonym

# A DICOM UID: digits and dots, starting 0-2, at least five components (1.2.840.10008.x...);
# versions (1.2.3), coordinates and IP addresses have fewer.
UID_PATTERN = r"(?<![\d.])[0-2](?:\.\d+){4,}(?!\.?\d)"
_BEFORE = r"(?<![\w.~/-])"  # a path spelling starts a name: not "/tmp/act" for "ct"
_AFTER = r"(?=$|/|[^\w.~-]|\.(?:$|\s))"  # and ends one: not "/tmp/ct2" for "/tmp/ct"


@dataclass
class _Root:
    alias: str
    path: Path
    _children: list[str] | None = field(default=None, repr=False)
    _folders: dict[str, _Root] = field(default_factory=dict, repr=False)

    def children(self, *, fresh: bool = False) -> list[str]:
        """Entries of the folder in name order (empty for a file or an unreadable folder);
        listed once, and again when ``fresh`` (an entry made since)."""
        if self._children is None or fresh:
            try:
                self._children = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
            except OSError:
                self._children = []
        return self._children

    def child_at(self, text: str, pos: int) -> tuple[str, int]:
        """(label, end) of ``/child`` at ``text[pos:]``: ``/#N`` for an entry of the folder
        (``/#N/#M`` for an entry of that entry, and so on), ``/...`` for anything else; ("",
        pos) when no ``/`` follows."""
        if not text.startswith("/", pos):
            return "", pos
        for fresh in (False, True):
            for index, name in sorted(enumerate(self.children(fresh=fresh), start=1), key=lambda c: -len(c[1])):
                end = pos + 1 + len(name)
                if text.startswith(name, pos + 1) and re.match(_AFTER, text[end:]):
                    inner, end = self._folder(name).child_at(text, end)
                    return f"/#{index}{inner}", end
        rest = re.match(r"/[^\s:'\"]*", text[pos:])
        return "/...", pos + (rest.end() if rest else 1)

    def _folder(self, name: str) -> _Root:
        if name not in self._folders:
            self._folders[name] = _Root(f"{self.alias}/{name}", self.path / name)
        return self._folders[name]


class Redactor:
    """``redactor(text)``: ``text`` without the command line's paths (unless shown) or UIDs."""

    def __init__(self, roles: Sequence[tuple[str, Path | None]], *, show_paths: bool = False) -> None:
        self.show_paths = show_paths
        self._roots: dict[str, _Root] = {}
        spellings: list[tuple[str, str]] = []
        for alias, path in roles:
            if path is None:
                continue
            key = f"r{len(self._roots)}"
            self._roots[key] = _Root(alias, path)
            forms = {str(path), str(path.absolute()), os.path.realpath(path)} - {"", ".", "/"}
            spellings += [(form, key) for form in forms]
        spellings.sort(key=lambda s: -len(s[0]))  # the longest spelling of a place wins
        self._keys = [key for _, key in spellings]
        alternatives = [f"(?P<p{i}>{_BEFORE}{re.escape(form)}{_AFTER})" for i, (form, _) in enumerate(spellings)]
        self._pattern = re.compile("|".join([*alternatives, f"(?P<uid>{UID_PATTERN})"]))

    @classmethod
    def for_paths(cls, show_paths: bool = False, **roles: Path | None) -> Redactor:
        """Roles by keyword: ``for_paths(input=..., out=...)`` names them ``<input>``, ``<out>``;
        ``out``'s parent folder (where the staging folder lives) is ``<out>/..``."""
        pairs: list[tuple[str, Path | None]] = [(f"<{k.replace('_', '-')}>", v) for k, v in roles.items()]
        out = roles.get("out")
        if out is not None:
            pairs.append(("<out>/..", out.absolute().parent))
        return cls(pairs, show_paths=show_paths)

    def __call__(self, text: str) -> str:
        pieces: list[str] = []
        pos = 0
        while (match := self._pattern.search(text, pos)) is not None:
            pieces.append(text[pos : match.start()])
            if match.lastgroup == "uid":
                pieces.append(pseudonym(match.group(), "uid"))
                pos = match.end()
                continue
            root = self._roots[self._keys[int(str(match.lastgroup)[1:])]]
            child, pos = root.child_at(text, match.end())
            pieces.append(text[match.start() : pos] if self.show_paths else root.alias + child)
        pieces.append(text[pos:])
        return "".join(pieces)
