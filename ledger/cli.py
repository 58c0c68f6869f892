"""The `magledger` command (SPEC 9): exit 0 on success, 1 on a failed check, 2 on bad usage."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from ledger.config import ConfigError, Settings
from ledger.errors import LedgerError


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        raise click.UsageError(f"bad configuration: {error}") from None


@click.group()
def main() -> None:
    """magledger: a tamper-evident custody ledger for rare-earth permanent magnets."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Threads per worker; concurrent posts in one worker share a commit.")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Run the HTTP API under granian, after applying pending migrations."""
    from ledger.checkpoints import Signer
    from ledger.db import make_engine, upgrade
    from ledger.server import PortInUse, refuse_a_port_in_use, run

    settings = _settings()
    try:
        refuse_a_port_in_use(host, port)
    except PortInUse as error:
        raise click.ClickException(error.strerror) from None
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    # Created here, before the server forks, so that every process signs with the one key.
    Signer.from_file(settings.signing_key_path, settings.origin)
    run(settings, host, port, workers, threads)


@main.command()
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
def worker(burst: bool) -> None:
    """Run an RQ worker for the ledger's background jobs (needs REDIS_URL)."""
    settings = _settings()
    if not settings.redis_url:
        raise click.UsageError("magledger worker needs REDIS_URL (without it the API works in embedded mode)")
    from ledger.logs import configure
    from workers.runner import run_worker

    configure(settings.log_format)
    run_worker(settings, burst=burst)


@main.command()
def scheduler() -> None:
    """Run RQ's cron scheduler: periodic projection catch-up and checkpoints (needs REDIS_URL)."""
    settings = _settings()
    if not settings.redis_url:
        raise click.UsageError("magledger scheduler needs REDIS_URL")
    from ledger.logs import configure
    from workers.runner import run_scheduler

    configure(settings.log_format)
    run_scheduler(settings)


@main.group()
def projections() -> None:
    """The read models folded from the log."""


@projections.command("rebuild")
@click.argument("name", required=False)
@click.option("--queue", "on_queue", is_flag=True,
              help="Hand the rebuild to a worker (needs REDIS_URL) and print the job id instead of waiting.")
@click.option("--processes", default=os.cpu_count() or 1, show_default="the CPUs", type=click.IntRange(1, 64),
              help="Fold independent projections in this many processes at once (PostgreSQL only); with "
                   "--queue, above 1 gives each group a job of its own, for as many workers.")
def projections_rebuild(name: str | None, on_queue: bool, processes: int) -> None:
    """Rebuild one projection (or all) into a new generation, then switch to it.

    An interrupted rebuild resumes from its checkpoints when run again.
    """
    import time

    from ledger.services import Ledger

    settings = _settings()
    if on_queue and not settings.redis_url:
        raise click.UsageError("--queue needs REDIS_URL")
    ledger = Ledger.open(settings, migrate=True)
    names = [name] if name else list(ledger.projections.projections)
    unknown = [n for n in names if n not in ledger.projections.projections]
    if unknown:
        raise click.UsageError(f"no projection {unknown[0]!r}; there are {', '.join(ledger.projections.projections)}")
    if on_queue:
        from workers.runner import enqueue_rebuild

        targets = ledger.projections.start_rebuild(names)
        groups = ledger.projections.parallel_groups(targets, processes)
        click.echo(json.dumps({"job_id": enqueue_rebuild(settings, groups), "projections": targets}))
        ledger.close()
        return
    head = ledger.store.last_position()
    started = time.perf_counter()
    with click.progressbar(length=max(head, 1), label="rebuilding", file=sys.stderr) as bar:
        seen = {"position": 0}

        def advance(step):
            bar.update(max(step.position - seen["position"], 0))
            seen["position"] = step.position

        generations = ledger.projections.rebuild(names, on_progress=advance, processes=processes)
    elapsed = time.perf_counter() - started
    click.echo(json.dumps({"projections": generations, "events": head, "seconds": round(elapsed, 3),
                           "events_per_second": round(head / elapsed) if elapsed > 0 else None}))
    ledger.close()


@projections.command("status")
def projections_status() -> None:
    """Each projection's serving position against the head of the log."""
    from ledger.services import Ledger

    ledger = Ledger.open(_settings(), migrate=True)
    click.echo(json.dumps({"head": ledger.store.last_position(), "projections": ledger.projections.positions()}))
    ledger.close()


@main.command()
def checkpoint() -> None:
    """Sign a tree head at the current end of the log and print it as JSON."""
    from ledger.services import Ledger

    ledger = Ledger.open(_settings(), migrate=True)
    try:
        click.echo(json.dumps(ledger.checkpoints.make().describe()))
    finally:
        ledger.close()


@main.command()
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True),
              help="File to write (default: standard output).")
def export(out_path: str | None) -> None:
    """Write the log as JSON lines: a header with a checkpoint signed now, then every event
    it covers, each with its leaf hash."""
    from ledger.integrity import export_log
    from ledger.services import Ledger

    ledger = Ledger.open(_settings(), migrate=True)
    try:
        signed = ledger.checkpoints.make()
        with (open(out_path, "w", encoding="utf-8") if out_path else contextlib.nullcontext(sys.stdout)) as out, \
                click.progressbar(length=max(signed.tree_size, 1), label="exporting", file=sys.stderr) as bar:
            written = export_log(ledger.store, signed, out, on_progress=bar.update)
    finally:
        ledger.close()
    click.echo(json.dumps({"events": written, "checkpoint": signed.describe()}), err=True)


@main.command()
@click.option("--export", "export_path", type=click.Path(exists=True, dir_okay=False),
              help="Verify this export instead of the database.")
@click.option("--checkpoint", "checkpoint_path", type=click.Path(exists=True, dir_okay=False),
              help="A signed note, or the JSON of GET /v1/ledger/checkpoint (default: the export's, "
                   "or the database's latest).")
@click.option("--key", "vkey",
              help="The note verifier key (name+id+key, as GET /v1/ledger/public-key gives it), or a file "
                   "holding it (default: the public half of LEDGER_SIGNING_KEY).")
def verify(export_path: str | None, checkpoint_path: str | None, vkey: str | None) -> None:
    """Check the log against a signed checkpoint: canonical forms, leaf hashes, the Merkle
    root and the signature. Exit 1 naming the first position that disagrees."""
    from ledger.checkpoints import BadCheckpoint
    from ledger.integrity import load_checkpoint, read_export, stored_envelopes, verify_log

    settings = _settings()
    verifier = _verifier(vkey, settings)
    with contextlib.ExitStack() as stack:
        try:
            if export_path:
                header, envelopes = read_export(stack.enter_context(open(export_path, encoding="utf-8")))
                note = header["checkpoint"]["note"]
            else:
                from ledger.services import Ledger

                ledger = Ledger.open(settings)
                stack.callback(ledger.close)
                latest = ledger.checkpoints.latest()
                if latest is None and not checkpoint_path:
                    raise click.UsageError("the database has no checkpoint yet; run magledger checkpoint first")
                note = latest.note if latest else None
                envelopes = stored_envelopes(ledger.store)
            if checkpoint_path:
                with open(checkpoint_path, encoding="utf-8") as text:
                    note = text.read()
            signed = load_checkpoint(note, verifier)
            with click.progressbar(length=max(signed.tree_size, 1), label="verifying", file=sys.stderr) as bar:
                outcome = verify_log(envelopes, signed, on_progress=bar.update)
        except (BadCheckpoint, ValueError, KeyError) as error:
            outcome = None
            problem = f"bad checkpoint or export: {error}"
    if outcome is None:
        click.echo(json.dumps({"ok": False, "tree_size": None, "checked": 0, "position": None, "problem": problem}))
        sys.exit(1)
    click.echo(json.dumps(outcome.describe()))
    if not outcome.ok:
        sys.exit(1)


def _verifier(vkey: str | None, settings: Settings):
    import os

    from ledger.checkpoints import BadCheckpoint, Signer, Verifier

    if vkey:
        text = open(vkey, encoding="utf-8").read() if os.path.isfile(vkey) else vkey  # noqa: SIM115
        try:
            return Verifier.parse(text)
        except BadCheckpoint as error:
            raise click.UsageError(f"--key: {error}") from None
    if not os.path.exists(settings.signing_key_path):
        raise click.UsageError(f"no --key given and no signing key at {settings.signing_key_path}")
    return Signer.from_file(settings.signing_key_path, settings.origin).verifier


@main.command()
@click.option("--full", is_flag=True, help="Judge every batch again instead of reading the findings projection.")
@click.option("--format", "output", type=click.Choice(["json", "csv"]), default="json", show_default=True,
              help="The report as JSON, or its findings as CSV.")
def audit(full: bool, output: str) -> None:
    """Run a diversion audit now and print its report."""
    from ledger.services import Ledger

    ledger = Ledger.open(_settings(), migrate=True)
    try:
        requested = ledger.audits.request("full" if full else "incremental", "cli")
        report = ledger.audits.run(requested["audit_id"])
        click.echo(ledger.audits.findings_csv(report["audit_id"]) if output == "csv"
                   else json.dumps(report, indent=2), nl=output != "csv")
    finally:
        ledger.close()


@main.command()
def demo() -> None:
    """Seed the story of SPEC 0 and print the verdicts and the audit summary."""
    from ledger.demo import run_demo
    from ledger.services import Ledger

    ledger = Ledger.open(_settings(), migrate=True)
    try:
        click.echo(run_demo(ledger))
    finally:
        ledger.close()


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    from ledger.db import make_engine, upgrade

    engine = make_engine(_settings().database_url)
    upgrade(engine)
    click.echo("database is up to date", err=True)


@main.group()
def party() -> None:
    """Parties and their keys."""


@party.command("add")
@click.argument("party_id")
@click.option("--name", required=True, help="The organisation's name.")
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 code, e.g. IN.")
@click.option("--role", required=True, type=click.Choice(["partner", "regulator", "auditor", "admin"]))
def party_add(party_id: str, name: str, country: str, role: str) -> None:
    """Register a party and print its first API key as JSON (shown only this once)."""
    from ledger.services import Ledger

    ledger = Ledger.open(_settings(), migrate=True)
    try:
        registered, key = ledger.parties.register(party_id, name, country, role)
    except LedgerError as error:
        click.echo(f"error: {error.detail} {json.dumps(error.errors) if error.errors else ''}".rstrip(), err=True)
        sys.exit(2 if error.status == 422 else 1)
    finally:
        ledger.close()
    click.echo(json.dumps({"party_id": registered.party_id, "api_key": key.api_key, "key_id": key.key_id}))


if __name__ == "__main__":
    main()
