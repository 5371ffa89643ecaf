"""``scrubin`` command line. Heavy engines are imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scrubin.cli_keys import keys_app
from scrubin.console import configure_logging, library_output_to_log, one_line_errors

app = typer.Typer(
    help="scrubin: AR surgical guidance and remote mentoring.", no_args_is_help=True, add_completion=False
)
app.add_typer(keys_app, name="keys")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details to stderr.")] = False,
) -> None:
    configure_logging(verbose)


@app.command()
def prepare(
    input: Annotated[
        Path | None,
        typer.Argument(help="CT: a DICOM series folder, .nii/.nii.gz, .nrrd/.nhdr or .mha/.mhd.", show_default=False),
    ] = None,  # noqa: UP007
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Patient-model folder to write. An existing one is replaced only if it is a complete scrubin model "
            "(by its manifest) and holds nothing else; never an input folder, one above or inside it.",
        ),
    ] = Path("patient-model"),
    phantom: Annotated[
        bool, typer.Option("--phantom", help="Use the built-in SYNTHETIC head phantom instead of INPUT.")
    ] = False,
    series: Annotated[
        str | None,
        typer.Option(
            "--series",
            help="DICOM series to use: its name from `scrubin series` or its Series Instance UID (default: the largest).",
        ),
    ] = None,  # noqa: UP007
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="Integer label map (e.g. TotalSegmentator NIfTI): one mesh per label."),
    ] = None,  # noqa: UP007
    label_names: Annotated[
        Path | None,
        typer.Option("--label-names", help="Names/colours for --labels: JSON {id: name} or a Slicer colour table."),
    ] = None,  # noqa: UP007
    landmarks: Annotated[
        Path | None,
        typer.Option(
            "--landmarks",
            help="Anatomical landmarks marked on this CT, for the surgeon to touch: Slicer markups .mrk.json, "
            "Slicer .fcsv, or CSV name,x,y,z[,kind] in LPS mm. Written to the manifest (replacing the phantom's).",
        ),
    ] = None,  # noqa: UP007
    segments: Annotated[
        str, typer.Option("--segments", help="Comma-separated threshold segments to mesh: skin, bone, or none.")
    ] = "skin,bone",
    budget: Annotated[
        str, typer.Option("--budget", metavar="<int>", help="Total triangle budget over all meshes.")
    ] = "200000",
    max_memory_gb: Annotated[
        str,
        typer.Option(
            "--max-memory-gb",
            metavar="<float>",
            help="Refuse volumes whose processing would need more memory than this (decided from the header).",
        ),
    ] = "6",
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an --out scrubin model even if its files no longer match its manifest."),
    ] = False,
    allow_modality: Annotated[
        list[str] | None,  # noqa: UP007
        typer.Option(
            "--allow-modality",
            metavar="NAME",
            help="Also accept this DICOM modality besides CT (e.g. OT); recorded as a warning in the manifest.",
        ),
    ] = None,
    show_paths: Annotated[
        bool, typer.Option("--show-paths", help="Print paths in messages (they can carry a patient's name).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Turn a CT into a headset-ready patient model: model.glb, meshes/*.ply|stl, manifest.json."""
    from imaging.errors import ImagingError
    from scrubin.redact import Redactor

    redact = Redactor.for_paths(
        show_paths, input=input, labels=labels, label_names=label_names, landmarks=landmarks, out=out
    )
    with one_line_errors((ImagingError, OSError), debug, redact), library_output_to_log(redact):
        from scrubin.prepare_command import run_prepare

        run_prepare(
            input=input,
            out=out,
            phantom=phantom,
            series=series,
            labels=labels,
            label_names=label_names,
            landmarks=landmarks,
            segments=segments,
            budget=budget,
            max_memory_gb=max_memory_gb,
            force=force,
            redact=redact,
            allow_modality=tuple(allow_modality or ()),
        )


@app.command()
def series(
    folder: Annotated[Path, typer.Argument(help="A folder of DICOM files.")],
    show_paths: Annotated[
        bool, typer.Option("--show-paths", help="Print paths in messages (they can carry a patient's name).")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """List the image series in a DICOM folder (name, modality, slices, size), largest first."""
    from imaging.errors import ImagingError
    from scrubin.redact import Redactor

    redact = Redactor.for_paths(show_paths, input=folder)
    with one_line_errors((ImagingError, OSError), debug, redact), library_output_to_log(redact):
        from scrubin.prepare_command import run_series

        run_series(folder, redact)


@app.command()
def audit(
    session: Annotated[str, typer.Argument(help="Theatre session name.")],
    directory: Annotated[Path, typer.Option("--dir", help="Folder of the audit logs.")] = Path("audit"),
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Print a session's audit log, oldest first, after verifying its hash chain."""
    from scrubin.audit import AuditError

    with one_line_errors((AuditError,), debug):
        from scrubin.audit_command import run_audit

        run_audit(session, directory)


config_app = typer.Typer(help="Service configuration (TOML file < SCRUBIN_* environment).", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("dump")
def config_dump(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Show this file's effective settings instead of the defaults.")
    ] = None,  # noqa: UP007
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Print the settings as TOML (the defaults, or a file's effective settings)."""
    from scrubin.config import ConfigError

    with one_line_errors((ConfigError,), debug):
        from scrubin.serve_command import run_config_dump

        run_config_dump(config)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file (see scrubin config dump).")
    ] = None,  # noqa: UP007
    json_logs: Annotated[bool, typer.Option("--json-logs", help="Log one JSON object per line to stderr.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Run the theatre sessions until Ctrl-C or SIGTERM."""
    from scrubin.config import ConfigError
    from scrubin.service import ServiceError

    with one_line_errors((ConfigError, ServiceError), debug):
        from scrubin.serve_command import run_serve

        run_serve(config, json_logs)


@app.command()
def invite(
    session: Annotated[str, typer.Argument(help="Theatre session name (as in the configuration).")],
    role: Annotated[
        str, typer.Option("--role", help="mentor (may place marks) or observer (watches only).")
    ] = "observer",
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Link lifetime in seconds (default: mentor.token_ttl_s).")
    ] = None,  # noqa: UP007
    name: Annotated[
        str | None, typer.Option("--name", help="Name shown to the others and in the audit log (default: the role).")
    ] = None,  # noqa: UP007
    url: Annotated[
        str | None,
        typer.Option("--url", help="Base address of the mentor page (default: the one the running serve recorded)."),
    ] = None,  # noqa: UP007
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The TOML settings file scrubin serve runs with.")
    ] = None,  # noqa: UP007
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """Print a mentor-page link (mentor or observer) for a session of a running scrubin serve."""
    from scrubin.config import ConfigError
    from scrubin.invite_command import InviteError

    with one_line_errors((ConfigError, InviteError), debug):
        from scrubin.invite_command import run_invite

        run_invite(config, session, role, name, ttl, url)


@app.command()
def demo(
    seconds: Annotated[
        float | None, typer.Option("--seconds", help="Stop after this many seconds of streaming (default: Ctrl-C).")
    ] = None,  # noqa: UP007
    report: Annotated[Path, typer.Option("--report", help="Report folder to write.")] = Path("scrubin-report"),
    headless: Annotated[
        bool, typer.Option("--headless", help="Plain periodic lines instead of the live view.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated headset (noise, dropouts).")] = 1,
    rate: Annotated[
        float, typer.Option("--rate", help="Depth frames per second the simulated headset sends (AHAT: 45).")
    ] = 45.0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """The whole loop on the SYNTHETIC phantom with a simulated headset; writes a report."""
    from scrubin.config import ConfigError
    from scrubin.demo import DemoError
    from scrubin.service import ServiceError

    with one_line_errors((ConfigError, ServiceError, DemoError), debug):
        from scrubin.demo import run_demo_command

        run_demo_command(seconds, report, headless, seed, rate)


if __name__ == "__main__":
    app()
