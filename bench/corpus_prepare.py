"""The whole outside corpus through ``scrubin prepare``: model, clean refusal, anything else.

Every case of tests/corpus.py (third-party DICOM/NIfTI/NRRD/MetaImage files and the
hand-made variants of issue 15, plus the real CTs when SCRUBIN_DATA_DIR is set) runs as a
fresh ``scrubin prepare`` process with a time and an address-space bound. Prints one line per
case that is not as expected, the table by source, and writes bench/results/corpus_prepare.json
(+ .md). ``--docs`` also replaces the table in docs/reliability.md between its markers.

    .venv/bin/python bench/corpus_prepare.py [--jobs 2] [--only SUBSTRING] [--repo CHECKOUT] [--docs]

``--repo`` runs another checkout's code on the same corpus (for a before/after comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from corpus import (  # noqa: E402  (tests/ is put on the path just above)
    EITHER,
    MODEL,
    MODEL_MADE,
    OTHER,
    REFUSE,
    REFUSED,
    CorpusCase,
    Outcome,
    corpus_cases,
    run_case,
)

RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "reliability.md"
START, END = "<!-- imaging-corpus-table:start -->", "<!-- imaging-corpus-table:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose code runs (default: this one)")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/reliability.md")
    args = parser.parse_args()
    data_dir = Path(os.environ["SCRUBIN_DATA_DIR"]) if os.environ.get("SCRUBIN_DATA_DIR") else None
    cases = [c for c in corpus_cases(data_dir) if args.only in c.name]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="corpus-prepare-") as work:

        def one(case: CorpusCase) -> Outcome:
            try:
                outcome = run_case(case, Path(work), repo=args.repo.resolve())
            except Exception as exc:  # the corpus's own builder failed: say so, go on
                print(f"BUILD FAILED   {case.name}: {exc.__class__.__name__}: {exc}", flush=True)
                return Outcome(case, OTHER, -1, f"build failed: {exc!r}", 0.0, 0.0)
            if outcome.kind == OTHER or outcome.wrong_model or outcome.missing_model:
                print(f"{_verdict(outcome):14s} {case.name}: {_first_line(outcome)}", flush=True)
            return outcome

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(pool.map(one, cases))
    wall = time.perf_counter() - start
    table = markdown(outcomes, wall, args.jobs)
    print()
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "corpus_prepare.md").write_text(table + "\n")
    (RESULTS / "corpus_prepare.json").write_text(json.dumps([_record(o) for o in outcomes], indent=1) + "\n")
    print(f"wrote {RESULTS / 'corpus_prepare.json'} and {RESULTS / 'corpus_prepare.md'}")
    if args.docs:
        text = DOCS.read_text()
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        DOCS.write_text(f"{head}{START}\n{table}\n{END}{tail}")
        print(f"updated {DOCS}")


def _verdict(o: Outcome) -> str:
    if o.wrong_model:
        return "WRONG MODEL"
    if o.missing_model:
        return "NO MODEL"
    return "ANYTHING ELSE"


def _first_line(o: Outcome) -> str:
    """Exit code, how many stderr lines, and the last one (the error line, when there is one)."""
    lines = [ln.strip() for ln in o.stderr.splitlines() if ln.strip()]
    if not lines:
        return f"exit {o.returncode}, no stderr"
    return f"exit {o.returncode}, {len(lines)} stderr line(s), last: {lines[-1][:200]}"


def _record(o: Outcome) -> dict[str, object]:
    return {
        "case": o.case.name,
        "source": o.case.source,
        "expect": o.case.expect,
        "kind": o.kind,
        "returncode": o.returncode,
        "stderr_last": _first_line(o),
        "seconds": round(o.seconds, 3),
        "peak_rss_mib": round(o.peak_rss_mib, 1),
    }


def markdown(outcomes: list[Outcome], wall_s: float, jobs: int) -> str:
    counts = Counter((o.case.source, o.case.expect, o.kind) for o in outcomes)
    sources = sorted({o.case.source for o in outcomes})
    lines = [
        f"{len(outcomes)} inputs, `scrubin prepare --segments skin --max-memory-gb 3` each in a fresh process "
        f"({wall_s / 60:.1f} min on {jobs} workers; bench/corpus_prepare.py).",
        "",
        "| source | must | inputs | model | clean refusal | anything else |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for source in sources:
        for expect in (MODEL, REFUSE, EITHER):
            n = sum(counts[(source, expect, k)] for k in (MODEL_MADE, REFUSED, OTHER))
            if n:
                row = [counts[(source, expect, k)] for k in (MODEL_MADE, REFUSED, OTHER)]
                lines.append(f"| {source} | {_must(expect)} | {n} | {row[0]} | {row[1]} | {row[2]} |")
    total = Counter(o.kind for o in outcomes)
    lines.append(
        f"| **all** | | **{len(outcomes)}** | **{total[MODEL_MADE]}** | **{total[REFUSED]}** | **{total[OTHER]}** |"
    )
    wrong = [o for o in outcomes if o.wrong_model]
    missing = [o for o in outcomes if o.missing_model]
    other = [o for o in outcomes if o.kind == OTHER]
    lines += [
        "",
        f"Models from inputs that must be refused: {len(wrong)}. "
        f"Inputs that must give a model and did not: {len(missing)}. Anything else: {len(other)}.",
    ]
    for o in wrong + missing + other:
        lines.append(f"- `{o.case.name}` ({_verdict(o).lower()}): {_first_line(o)}")
    return "\n".join(lines)


def _must(expect: str) -> str:
    return {MODEL: "give a model", REFUSE: "be refused", EITHER: "either"}[expect]


if __name__ == "__main__":
    main()
