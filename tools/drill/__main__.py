"""``python -m tools.drill SCENARIO.toml``: run the exactly-once drill from a checkout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from surefoot.errors import ConfigurationError
from tools.drill import DrillError, Scenario, drill_table, run_drill


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario_path", type=click.Path(dir_okay=False))
@click.option("--store", type=click.Choice(["sqlite", "redis"]), help="Override [drill] store.")
@click.option(
    "--target", type=click.Choice(["gateway", "webhooks", "outbox", "saga"]),
    help="Override [drill] target (webhooks: senders deliver signed events to a WebhookReceiver; "
    "outbox: applications' transactions enqueue them, killed outbox workers deliver them; "
    "saga: killed saga workers run checkouts against failing partners).",
)  # fmt: skip
@click.option(
    "--idempotency/--no-idempotency", default=None,
    help="Protect POST /charges at the gateway (--no-idempotency: the comparison run).",
)  # fmt: skip
@click.option("--clients", type=click.IntRange(1, 1024), help="Override [drill] clients.")
@click.option("--payments", type=click.IntRange(1), help="Override [drill] payments (per client).")
@click.option("--workers", type=click.IntRange(1, 16), help="Override [drill] workers.")
@click.option("--seed", type=int, help="Override [drill] seed.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results.")
@click.option("--keep", is_flag=True, help="Keep the working directory (logs, ledger, store).")
def main(
    scenario_path: str,
    store: str | None,
    target: str | None,
    idempotency: bool | None,
    clients: int | None,
    payments: int | None,
    workers: int | None,
    seed: int | None,
    json_path: str | None,
    keep: bool,
) -> None:
    """Run the exactly-once drill SCENARIO_PATH (examples/drills/*.toml).

    Starts the example payments API behind `surefoot serve`, with a chaos proxy on each side
    of the gateway (or, with target = "webhooks", behind a WebhookReceiver in its own
    process, the senders' chaos proxy in front; with target = "outbox", the same receiver
    fed by outbox workers that are killed and restarted; with target = "saga", checkout
    sagas run by killed saga workers against failing partners), makes every client's payments
    through the faults, then audits the ledger. Exits 1 if a payment was duplicated, missing or told
    the wrong charge.
    """
    try:
        scenario = Scenario.from_toml(scenario_path).overridden(
            store=store,
            target=target,
            idempotency=idempotency,
            clients=clients,
            payments=payments,
            workers=workers,
            seed=seed,
        )
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    # Piped output keeps whole lines: they are meant to be read in CI logs.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{scenario.name}: payments", total=scenario.total)
        try:
            report = run_drill(
                scenario,
                progress=lambda done, total: progress.update(task, completed=done),
                log=lambda line: progress.console.print(f"[dim]{line}[/]", highlight=False),
                keep=keep,
            )
        except (ConfigurationError, DrillError) as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
    console.print(drill_table([report]))
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main(prog_name="python -m tools.drill")
