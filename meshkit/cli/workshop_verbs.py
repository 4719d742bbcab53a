"""Verbs for instructors: ``meshkit workshop serve`` and ``meshkit workshop export-student``.

Thin like the rest of the CLI: parse options, call `meshkit.workshop`, print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshkit.cli.common import EXIT_REJECTED, EXIT_UNAVAILABLE, _fail, app

workshop_app = typer.Typer(name="workshop", no_args_is_help=True,
                           help="Run a workshop: instructor server, dashboard, student labs.")
app.add_typer(workshop_app, name="workshop")


def _default_state_dir() -> Path:
    from meshkit.control.address import default_home  # noqa: PLC0415

    return default_home() / "workshop-server"


@workshop_app.command()
def serve(  # noqa: PLR0917 (typer maps parameters to options)
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for a room on the same network).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 15080,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="Where the workshop lives (default $MESHKIT_HOME/workshop-server); "
                            "serving the same dir again resumes the workshop.")] = None,
    title: Annotated[str, typer.Option(help="Title shown on the dashboard (for a new workshop).")]
    = "meshkit workshop",
    max_attendees: Annotated[int, typer.Option(
        "--max-attendees", min=1, max=500, help="Cap on attendees: a join beyond it is refused (409).")]
    = 500,
    results_per_second: Annotated[float, typer.Option(
        "--results-per-second", min=0.01, max=1000,
        help="Result requests per second per attendee beyond a burst; more get 429 with Retry-After.")]
    = 2.0,
    results_burst: Annotated[int, typer.Option(
        "--results-burst", min=1, max=10000, help="Result requests an attendee may send at once.")] = 30,
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", min=1, max=3600,
        help="Seconds before a connection with no request (or half of one) is closed.")] = 30.0,
) -> None:
    """Run the instructor server: prints the instructor token, the join code and the dashboard URL.
    The labs and their steps come from meshkit's lab catalog: attendees cannot add steps, and a
    release or lock of a lab or step that does not exist is refused with the valid ids."""
    from meshkit.lab import catalog  # noqa: PLC0415
    from meshkit.workshop.limits import RoomLimits  # noqa: PLC0415
    from meshkit.workshop.server import serve as run  # noqa: PLC0415

    outlines = {name: [step.id for step in spec.steps]
                for name in catalog.names() if (spec := catalog.get(name)) is not None}

    directory = state_dir or _default_state_dir()
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {host} over plain HTTP; put it behind HTTPS outside a trusted room")
    try:
        limits = RoomLimits(results_per_second=results_per_second, results_burst=results_burst,
                            idle_timeout=idle_timeout)
        run(host, port, directory, title=title, outlines=outlines, max_attendees=max_attendees,
            limits=limits, announce=lambda line: print(line, flush=True))
    except OSError as error:
        _fail(EXIT_UNAVAILABLE, f"error: cannot serve the workshop on {host}:{port}: {error}")


@workshop_app.command("export-student")
def export_student(
    labs: Annotated[Path, typer.Argument(help="The labs directory (notebooks with solutions).")],
    out: Annotated[Path, typer.Argument(help="Where to write the student edition.")],
) -> None:
    """Write the learner edition of the labs: exercise cells of catalog labs back to their placeholders,
    cells tagged `solution` and `# BEGIN/END SOLUTION` blocks removed."""
    from meshkit.lab.editions import EditionError, learner_cells  # noqa: PLC0415
    from meshkit.workshop.student import ExportError  # noqa: PLC0415
    from meshkit.workshop.student import export_student as export  # noqa: PLC0415

    try:
        report = export(labs, out, transform=learner_cells)
    except (ExportError, EditionError) as error:
        _fail(EXIT_REJECTED, f"error: {error}")
    print(f"wrote {len(report.notebooks)} notebooks to {out} ({report.emptied_exercises} exercise cells "
          f"emptied, "
          f"{report.removed_cells} solution cells and {report.removed_blocks} solution blocks removed, "
          f"{len(report.copied)} other files copied)")
