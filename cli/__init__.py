"""The enstune command line: thin commands over the library."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from enstune.errors import EnstuneError

app = typer.Typer(help="Optuna studies of ensembles fine-tuned from one pre-trained checkpoint.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
study_app = typer.Typer(help="Create, run and inspect studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")
storage_app = typer.Typer(help="A throwaway local PostgreSQL for development, tests and CI; a storage proxy for "
                                "many workers.", no_args_is_help=True)
app.add_typer(storage_app, name="storage")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Storage = Annotated[str | None, typer.Option("--storage", help="Storage URL (default: ENSTUNE_STORAGE or embedded).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Artifacts = Annotated[str | None, typer.Option("--artifacts", help="Artifact store: a directory or s3://bucket (default: ENSTUNE_ARTIFACTS or <runs>/artifacts).")]  # noqa: E501


def _one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one line on stderr and exit code 1 (ENSTUNE_DEBUG=1 shows tracebacks)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt as exc:
            # A worker says what it did with its trial (re-queued, members kept); 128 + the signal.
            outcome = getattr(exc, "outcome", "")
            err.print(f"interrupted{': ' + outcome if outcome else ''}", markup=False, highlight=False)
            raise typer.Exit(128 + getattr(exc, "signum", 2)) from None
        except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback
            if os.environ.get("ENSTUNE_DEBUG"):
                raise
            from enstune.storage import mask_url_text, resolve_url

            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            url = resolve_url(kwargs.get("storage"))
            text = mask_url_text(text, url) if url else text
            prefix = "error" if isinstance(exc, EnstuneError) else f"internal error ({type(exc).__name__})"
            err.print(f"{prefix}: {text}", markup=False, highlight=False)
            raise typer.Exit(1) from None

    return wrapper


templates_app = typer.Typer(help="List study templates (show NAME: one as TOML).", invoke_without_command=True)
app.add_typer(templates_app, name="templates")


@templates_app.callback()
@_one_line_errors
def templates(ctx: typer.Context) -> None:
    """List study templates; `templates show NAME` prints one as TOML."""
    from enstune.checks import load_checked
    from enstune.config import list_templates

    if ctx.invoked_subcommand is not None:
        return
    names = list_templates()
    table = Table("method", "search space", "trials", "description")
    # Whole names at any width, on a pipe too (rich assumes 80 columns there): the other columns wrap.
    table.columns.insert(0, Column("template", no_wrap=True, min_width=max(map(len, names))))
    for name in names:
        spec = load_checked(name)
        space = ", ".join(spec.space) or "—"
        table.add_row(name, spec.method, space, str(spec.n_trials), spec.description)
    out.print(table)


@templates_app.command("show")
@_one_line_errors
def templates_show(
    name: Annotated[str, typer.Argument(help="A template's name or a study file, PATH.toml.")],
) -> None:
    """Print a template (or study file) as TOML, its base merged in: a study file to start from."""
    from enstune.checks import load_checked, study_settings, task_settings
    from enstune.config import resolved_data, to_toml
    from enstune.settings import describe

    spec = load_checked(name)  # a template or file that would not create a study says so here
    data, template = resolved_data(name)
    notes = describe("options", study_settings(spec)) + describe("task.options", task_settings(spec))
    sys.stdout.write(f"# {name}: {template}'s keys with its bases merged; `enstune study create FILE.toml` reads it\n"
                     + to_toml(data) + "".join(f"\n{line}" for line in ["# The settings its plugins read:", *notes])
                     + "\n")


@study_app.command("create")
@_one_line_errors
def study_create(
    template: Annotated[str, typer.Argument(help="A template's name (enstune templates) or a study file, PATH.toml.")],
    name: Annotated[str | None, typer.Option("--name", help="Study name (default: the template's).")] = None,
    storage: Storage = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a spec key: key=value.")] = None,
) -> None:
    """Create a study from a template or a study file (idempotent); the spec is stored, the file is not needed after."""
    from enstune import study as st
    from enstune.storage import mask_url, resolve_url

    study_name, created = st.create(template, name=name, storage_url=storage, overrides=overrides or [])
    verb = "created" if created else "exists"
    out.print(f"study {study_name} {verb} in {mask_url(resolve_url(storage))}", markup=False, highlight=False)


@study_app.command("run")
@_one_line_errors
def study_run(
    name: str,
    storage: Storage = None,
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="Trials for this worker (default: until the study's budget is used).")] = None,  # noqa: E501
    devices: Annotated[str, typer.Option("--devices", help="cpu, cuda:0,cuda:1,… (a process each; cpu,cpu: two CPU processes) or auto (every GPU).")] = "cpu",  # noqa: E501
    per_member: Annotated[int, typer.Option("--per-member", help="Devices each member trains on, as one DistributedDataParallel job (NCCL on GPUs, gloo on CPUs).")] = 1,  # noqa: E501
    timeout: Annotated[float | None, typer.Option("--timeout", help="Stop starting trials after S seconds.")] = None,
    heartbeat: Annotated[int | None, typer.Option("--heartbeat", help="Heartbeat interval in seconds, at least the study's (its spec's heartbeat, default 60): a trial silent for two intervals is retried.")] = None,  # noqa: E501
    artifacts: Artifacts = None,
    wait_storage: Annotated[float, typer.Option("--wait-storage", help="Seconds to wait for a storage that is down when the worker starts (later calls wait 600).")] = 600.0,  # noqa: E501
) -> None:
    """Work on a study: run trials until its budget is used (shared with every other worker)."""
    from enstune import study as st
    from enstune.progress import reporting
    from enstune.publish import publish_study
    from enstune.worker import run

    with reporting(sys.stderr, err) as reporter:
        study = run(name, storage_url=storage, n_trials=n_trials, devices=devices, timeout=timeout,
                    reporter_factory=reporter, heartbeat=heartbeat, artifacts=artifacts, per_member=per_member,
                    wait_storage=wait_storage)
        publish_study(study)  # the pictures and the regime note in optuna-dashboard, through the worker's storage
    out.print(trials_table(st.trial_rows(study), title=f"study {name}"))
    _failed_for_good(st.failed_points(study), name)


FAILED_FOR_GOOD = 3  # exit code of `study run` when points of the study failed for good


def _failed_for_good(lines: list[str], name: str) -> None:
    """Say which points failed for good and how to queue them again; exit with FAILED_FOR_GOOD if any did."""
    for line in lines:
        err.print(f"error: {line}", markup=False, highlight=False)
    if lines:
        err.print(f"re-queue them with: enstune study requeue {name}", markup=False, highlight=False)
        raise typer.Exit(FAILED_FOR_GOOD)


def trials_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    """A rich table of trial rows (see ``enstune.study.trial_rows``)."""
    names = sorted({k for r in rows for k in r["params"]})
    table = Table(*(["#", "state"] + names + ["val ens acc (k=1..K)", "test ens", "member test acc"]), title=title)
    for r in rows:
        a = r["user_attrs"]
        curve = " ".join(f"{v:.3f}" for v in a.get("val_ens_acc", []))
        test = a.get("test_ens_acc", [])
        members = " ".join(f"{v:.3f}" for v in a.get("test_member_acc", []))
        state = "DIVERGED" if a.get("diverged") else r["state"]
        table.add_row(str(r["number"]), state, *[str(r["params"].get(n, "")) for n in names], curve,
                      f"{test[-1]:.4f}" if test else "", members)
    return table


@study_app.command("list")
@_one_line_errors
def study_list(storage: Storage = None, as_json: AsJson = False) -> None:
    """List the studies in the storage."""
    from enstune import study as st

    rows = st.list_studies(storage)
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("study", "template", "trials", "best val ens acc")
    for r in rows:
        best = "" if r["best_value"] is None else f"{r['best_value']:.4f}"
        table.add_row(r["name"], str(r["template"]), str(r["trials"]), best)
    out.print(table)


@study_app.command("show")
@_one_line_errors
def study_show(name: str, storage: Storage = None, as_json: AsJson = False) -> None:
    """Show a study's spec and trials."""
    from enstune import study as st

    info = st.show(name, storage)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    spec = info["spec"]
    best = "—" if info["best_value"] is None else f"{info['best_value']:.4f}"
    failed = f" (and {info['failed']} failed, their points queued again)" if info["failed"] else ""
    out.print(f"study {name} ({spec['template']}, method {spec['method']}, K={spec['members']}) in "
              f"{info['storage']}: {info['counted']}/{info['budget']} trials{failed}, best val ens acc {best}",
              markup=False, highlight=False)
    if spec.get("source"):
        out.print(f"made from {spec['template']} with {spec['source']}", markup=False, highlight=False)
    out.print(trials_table(info["trials"]))
    for line in info["failed_for_good"]:
        out.print(line, markup=False, highlight=False)


@study_app.command("requeue")
@_one_line_errors
def study_requeue(name: str, storage: Storage = None) -> None:
    """Queue again the points of a study that failed for good (each with its retries afresh)."""
    from enstune.worker import requeue_failed

    queued = requeue_failed(name, storage)
    for failed, again in queued:
        out.print(f"trial {failed} re-queued as trial {again}", markup=False, highlight=False)
    out.print(f"{len(queued)} point(s) of study {name} re-queued", markup=False, highlight=False)


@study_app.command("delete")
@_one_line_errors
def study_delete(
    name: str,
    storage: Storage = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a study and all its trials."""
    from enstune import study as st

    if not yes and not typer.confirm(f"delete study {name} and all its trials?"):
        err.print(f"study {name} not deleted", markup=False, highlight=False)
        raise typer.Exit(1)
    st.delete(name, storage)
    out.print(f"study {name} deleted", markup=False, highlight=False)


@app.command()
@_one_line_errors
def regimes(
    name: str,
    storage: Storage = None,
    as_json: AsJson = False,
    band: Annotated[float | None, typer.Option("--band", help="Fixed optimal band in accuracy (default: paired tests).")] = None,  # noqa: E501
    alpha: Annotated[float, typer.Option("--alpha", help="Optimal unless a Holm-corrected McNemar test at this level finds it worse than the best.")] = 0.05,  # noqa: E501
    barrier: Annotated[float, typer.Option("--barrier", help="Validation barrier above which a trial left the basin.")] = 0.05,  # noqa: E501
    degradation: Annotated[float, typer.Option("--degradation", help="Member degradation above which a trial left the basin.")] = 0.05,  # noqa: E501
) -> None:
    """Label every trial that ran more-local, optimal or semi-local, with its evidence, confidence and a regime map."""
    from enstune.publish import study_regimes
    from enstune.regimes import Thresholds, study_dict, study_tables

    th = Thresholds(band, alpha, barrier, degradation)
    labelled, info = study_regimes(name, storage, th)
    if as_json:
        sys.stdout.write(json.dumps(study_dict(name, th, labelled), indent=2) + "\n")
        return
    out.print(th.describe(), markup=False, highlight=False)
    for table in study_tables(name, labelled, info["trials"]):
        out.print(table)


@app.command()
@_one_line_errors
def recommend(
    dataset: Annotated[str, typer.Option("--dataset", help="The new dataset (e.g. cifar100, sun397, demo).")],
    method: Annotated[str, typer.Option("--method", help="sse or starsse.")] = "starsse",
    top: Annotated[int, typer.Option("--top", help="How many proposals.")] = 5,
    enqueue_into: Annotated[str | None, typer.Option("--enqueue", help="Queue the proposals as the first trials of this study.")] = None,  # noqa: E501
    storage: Storage = None,
    as_json: AsJson = False,
) -> None:
    """Propose (lr_mult, epoch_mult) for a dataset from finished studies and the paper's Table 3."""
    from enstune import recommend as rec

    proposals = rec.propose(dataset, method, top, storage)
    queued = rec.enqueue(enqueue_into, proposals, method, storage) if enqueue_into else []
    if not rec.knows(proposals):
        err.print(rec.unknown_note(dataset, storage), markup=False, highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(rec.proposals_dict(dataset, method, proposals, queued), indent=2) + "\n")
        return
    out.print(rec.proposals_table(proposals, dataset, method))
    if enqueue_into:
        out.print(rec.queued_line(enqueue_into, queued, proposals), markup=False, highlight=False)


@app.command("select")
@_one_line_errors
def select_members(
    name: str,
    size: Annotated[int | None, typer.Option("--size", help="At most this many members (one may be taken several times); default: the study's K.")] = None,  # noqa: E501
    soup: Annotated[bool, typer.Option("--soup", help="Also a greedy soup of the chosen members (forward passes on the CPU).")] = False,  # noqa: E501
    storage: Storage = None,
    artifacts: Artifacts = None,
    as_json: AsJson = False,
) -> None:
    """The best ensemble from the members of all completed trials: greedy selection on validation."""
    from enstune.select import select

    sel = select(name, size, storage, artifacts, soup)
    if sel.skipped:
        err.print(sel.skipped_note(), markup=False, highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(sel.to_dict(), indent=2) + "\n")
        return
    out.print(sel.table())
    for line in sel.summary_lines():
        out.print(line, markup=False, highlight=False)


@app.command()
@_one_line_errors
def report(
    name: str,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the PNG files.")] = Path("report"),
    storage: Storage = None,
) -> None:
    """Draw a study's pictures (paper Figures 1-4, regime maps) as PNGs and into optuna-dashboard."""
    from enstune.publish import publish

    paths = publish(name, storage, out_dir)
    if not paths:
        raise EnstuneError(f"study {name} has no completed trial yet: nothing to draw")
    for path in paths:
        out.print(str(path), markup=False, highlight=False)


@app.command()
@_one_line_errors
def dashboard(
    storage: Storage = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    artifacts: Artifacts = None,
) -> None:
    """Serve optuna-dashboard on the same storage (and the artifact store, for trials' pictures)."""
    import optuna_dashboard

    from enstune.storage import open_artifacts, open_storage

    store, artifact_store = open_storage(storage), open_artifacts(artifacts)
    _check_bindable(host, port)
    if not _loopback(host):
        err.print(f"warning: optuna-dashboard has no authentication: anyone who reaches {host}:{port} can change "
                  f"or delete studies; prefer --host 127.0.0.1 and an SSH tunnel", markup=False, highlight=False)
    err.print(f"optuna-dashboard on http://{host}:{port}/", markup=False, highlight=False)
    optuna_dashboard.run_server(store, host=host, port=port, artifact_store=artifact_store)


def _loopback(host: str) -> bool:
    """Whether ``host`` resolves only to loopback addresses (reachable from this machine alone)."""
    import ipaddress
    import socket

    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def _check_bindable(host: str, port: int) -> None:
    """Fail with one line, before the server announces itself, on a port or host it cannot listen on.

    The probe binds as the servers do (``SO_REUSEADDR``, set by gRPC and by optuna-dashboard's WSGI
    server): the port of a server that just ended, its connections in TIME_WAIT, is free; a live one's is not.
    """
    import socket

    if not 1 <= port <= 65535:
        raise EnstuneError(f"--port must be in 1..65535, got {port}")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise EnstuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


@storage_app.command("up")
@_one_line_errors
def storage_up() -> None:
    """Start the local PostgreSQL (created on first use; idempotent) and print its URL."""
    from enstune.storage import home_dir
    from enstune.storage.postgres import cluster

    out.print(cluster(home_dir()).up(), markup=False, highlight=False)


@storage_app.command("url")
@_one_line_errors
def storage_url() -> None:
    """Print the running local PostgreSQL's URL (e.g. for ENSTUNE_STORAGE)."""
    from enstune.storage import home_dir
    from enstune.storage.postgres import cluster

    out.print(cluster(home_dir()).url(), markup=False, highlight=False)


@storage_app.command("down")
@_one_line_errors
def storage_down(
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the cluster's data.")] = False,
) -> None:
    """Stop the local PostgreSQL; its data is kept unless --purge."""
    from enstune.storage import home_dir
    from enstune.storage.postgres import cluster

    out.print(cluster(home_dir()).down(purge=purge), markup=False, highlight=False)


@storage_app.command("proxy")
@_one_line_errors
def storage_proxy(
    storage: Storage = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 13000,
) -> None:
    """Serve the storage to workers (--storage grpc://HOST:PORT), who then hold no database connection."""
    from enstune.storage import mask_url, resolve_url, served_storage
    from enstune.storage.proxy import proxy_url, serve

    served = served_storage(storage)
    _check_bindable(host, port)
    if not _loopback(host):
        err.print(f"warning: the storage proxy has no authentication: anyone who reaches {host}:{port} can change "
                  f"or delete studies; bind it where only the workers reach it", markup=False, highlight=False)
    err.print(f"gRPC storage proxy on {proxy_url(host, port)} for {mask_url(resolve_url(storage))}", markup=False,
              highlight=False)
    serve(served, host, port)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    # Notices (a damaged cache entry retrained, a CIFAR copy that is not the official release) are one
    # line for the user, not a source location and a line of code.
    return f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}\n"


def main() -> None:
    """Console-script entry point: a usage error is one line on stderr and exit code 2."""
    import warnings

    warnings.formatwarning = _one_line_warning
    try:
        code = app(prog_name="enstune", standalone_mode=False)
    except typer.TyperException as exc:  # the command line itself is wrong (Click's usage errors)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: its help, as before
            out.print(exc.format_message(), markup=False, highlight=False)
            code = 0
        else:
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            err.print(f"error: {exc.format_message()}{where}", markup=False, highlight=False)
            code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        err.print("aborted", markup=False)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
