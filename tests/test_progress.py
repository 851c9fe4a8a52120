"""A worker's progress as log lines: what a batch job's log shows, in order, at a bounded rate."""

import io
import logging
import re
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path

import optuna

from enstune import study as st
from enstune.progress import LogReporter, log_lines
from enstune.worker import run

ENSTUNE = str(Path(sys.executable).parent / "enstune")
# One trial of two members: member 1 the x1 recipe (3 epochs), member 2 a cycle of 3 x 20 = 60 epochs.
STUDY = ["n_trials=1", "members=2", "finetune.epochs=3", "space.lr_mult.choices=[2]", "space.epoch_mult.choices=[20]",
         'evaluate=["calibration", "soups"]']


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def parse(text: str) -> list[tuple[datetime, str]]:
    """Each line's time (ISO 8601 to the second, with its UTC offset) and the rest of it."""
    rows = []
    for line in text.splitlines():
        stamp, rest = line.split(" ", 1)
        when = datetime.fromisoformat(stamp)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", stamp), line
        assert when.utcoffset() is not None
        rows.append((when, rest))
    return rows


def test_epoch_and_model_lines_come_at_a_bounded_rate_however_many_there_are():
    clock, log = Clock(), io.StringIO()
    with LogReporter(log, budget=1, interval=30, clock=clock) as reporter:
        reporter.trial_started(4, {"lr_mult": 2, "epoch_mult": 8}, 2)
        reporter.member_started(1, 2, 1000)
        for epoch in range(1, 1001):  # a second an epoch
            clock.now += 1
            reporter.epoch_done(epoch, 1000, 0.25)
        reporter.member_done(1, 0.5, cached=False)
        reporter.member_started(2, 2, 10_000)
        for epoch in range(1, 10_001):  # faster than the clock moves: the first and the last epoch only
            reporter.epoch_done(epoch, 10_000, 0.125)
        reporter.member_done(2, 0.75, cached=True)
        reporter.evaluating("calibration", 1, 2)
        reporter.evaluating("soups", 2, 2)
        for _ in range(300):  # an eighth of a second a model
            clock.now += 0.125
            reporter.weight_model_done()
        reporter.trial_done("COMPLETE", 0.75, 0.8)
    lines = [rest for _, rest in parse(log.getvalue())]
    epochs = [re.search(r"member (\d)/2 epoch (\d+)/", line).groups() for line in lines if " epoch " in line]
    assert epochs == [("1", str(e)) for e in [1, *range(31, 1000, 30), 1000]] + [("2", "1"), ("2", "10000")]
    assert [line for line in lines if " epoch " not in line] == [
        "worker: up to 1 trial(s)",
        "trial 4 started: lr_mult=2 epoch_mult=8, 2 member(s)",
        "trial 4 member 1/2 started: 1000 epoch(s)",
        "trial 4 member 1/2 done: 1000 epoch(s), val ens acc 0.5000, trained in 1000.0 s",
        "trial 4 member 2/2 started: 10000 epoch(s)",
        "trial 4 member 2/2 done: 10000 epoch(s), val ens acc 0.7500, cached in 0.0 s",
        "trial 4 evaluating calibration (1/2)",
        "trial 4 evaluating soups (2/2)",
        "trial 4 evaluating soups: 1 weight-space model(s) so far",
        "trial 4 evaluating soups: 241 weight-space model(s) so far",
        "trial 4 evaluated soups (2/2): 300 weight-space model(s) in 37.5 s",
        "trial 4 COMPLETE: value 0.7500, best 0.8000, in 1037.5 s",
        "worker: finished, 1 trial(s) ended here",
    ]
    assert "epoch 1/1000: loss 0.2500" in log.getvalue()


def test_a_step_is_named_with_the_member_it_comes_before_and_a_sampled_member_trains_no_epoch():
    clock, log = Clock(), io.StringIO()
    with LogReporter(log, budget=1, interval=30, clock=clock) as reporter:
        reporter.trial_started(0, {"lr_mult": 4}, 2)
        reporter.member_started(1, 2, 3)
        for epoch in (1, 2, 3):
            reporter.epoch_done(epoch, 3, 0.5)
        reporter.member_done(1, 0.5, cached=False)
        reporter.member_started(2, 2, 0, step="swag-collect")  # a walk whose length its maker reports
        for epoch in (1, 2):
            reporter.epoch_done(epoch, 2, 0.25)
        reporter.member_started(2, 2, 0)  # sampled from the walk: no training
        reporter.member_done(2, 0.75, cached=False)
        reporter.trial_done("COMPLETE", 0.75, 0.75)
    lines = [rest for _, rest in parse(log.getvalue())]
    assert lines[2:-2] == [
        "trial 0 member 1/2 started: 3 epoch(s)",
        "trial 0 member 1/2 epoch 1/3: loss 0.5000",
        "trial 0 member 1/2 epoch 3/3: loss 0.5000",
        "trial 0 member 1/2 done: 3 epoch(s), val ens acc 0.5000, trained in 0.0 s",
        "trial 0 step swag-collect for member 2/2 started",
        "trial 0 step swag-collect for member 2/2 epoch 1/2: loss 0.2500",
        "trial 0 step swag-collect for member 2/2 epoch 2/2: loss 0.2500",
        "trial 0 member 2/2 started",
        "trial 0 member 2/2 done: 0 epoch(s), val ens acc 0.7500, trained in 0.0 s",
    ]


def test_log_records_and_warnings_are_timestamped_lines_and_everything_is_put_back_after():
    log, elsewhere = io.StringIO(), io.StringIO()
    optuna_log = logging.getLogger("optuna")
    before = optuna_log.handlers[:], optuna_log.propagate, warnings.showwarning
    with log_lines(log):
        logging.getLogger("enstune.worker").warning("a trial of this worker was retried elsewhere")
        optuna.logging.get_logger("optuna.storages").warning("heartbeat\nlate")
        warnings.warn("member cache entry m-1 is damaged", RuntimeWarning, stacklevel=1)
        try:
            raise OSError("disk full")
        except OSError:
            logging.getLogger("enstune.storage").exception("cannot write")
    handler = logging.StreamHandler(elsewhere)
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("enstune.worker").warning("after")
    finally:
        logging.getLogger().removeHandler(handler)
    assert [rest for _, rest in parse(log.getvalue())] == [
        "WARNING enstune.worker: a trial of this worker was retried elsewhere",
        "WARNING optuna.storages: heartbeat late",
        "WARNING py.warnings: RuntimeWarning: member cache entry m-1 is damaged",
        "ERROR enstune.storage: cannot write (OSError: disk full)",
    ]
    assert (optuna_log.handlers, optuna_log.propagate, warnings.showwarning) == before
    assert elsewhere.getvalue() == "after\n" and "after" not in log.getvalue()


def _events(text: str) -> list[str]:
    """The lines without their times, each epoch line cut to 'epoch', and the figures that vary masked."""
    rows = [re.sub(r"\d+\.\d+", "F", rest) for _, rest in parse(text)]
    return [re.sub(r" epoch \d+/\d+: loss F$", " epoch", row) for row in rows]


def test_a_worker_logging_to_a_file_writes_each_step_as_it_happens(home, tmp_path):
    for name in ("first", "second"):
        st.create("starsse-demo", name=name, overrides=STUDY)
    run("first")  # fills the member cache
    # The second study's member 2 is found damaged: a warning, then its 60 epochs trained again.
    entry = max((home / "artifacts").glob("member-*.pt"), key=lambda path: path.stat().st_mtime_ns)
    damaged = bytearray(entry.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # inside the payload: its digest no longer matches
    entry.write_bytes(bytes(damaged))
    log = tmp_path / "run.log"
    with log.open("w") as stderr:  # a file, as a batch scheduler's job log is
        ran = subprocess.run([ENSTUNE, "study", "run", "second"], stdout=subprocess.PIPE, stderr=stderr, text=True,
                             timeout=300)
    text = log.read_text()
    assert ran.returncode == 0, text
    assert not re.search(r"[\x1b\r]", text), "no terminal control characters"
    times = [when for when, _ in parse(text)]
    assert times == sorted(times)

    events = _events(text)
    epochs = events.count("trial 0 member 2/2 epoch")
    models = [e for e in events if "so far" in e]
    assert models and models[0] == "trial 0 evaluating soups: 1 weight-space model(s) so far"
    # The first line says what each trial's evaluation costs (here soups only, on the demo's training images).
    assert re.fullmatch(r"worker: up to 1 trial\(s\); evaluation per trial: ~[\d,]+ forward passes over 4 "
                        r"weight-space models, BN recalibrated on \d+ training images each \(soups [\d,]+ "
                        r"\(4 models\)\)", events[0]), events[0]
    assert [e for e in events if "so far" not in e and not re.search(r" BN \d", e)] == [
        events[0],
        "trial 0 started: lr_mult=2 epoch_mult=20, 2 member(s)",
        "trial 0 member 1/2 started: 3 epoch(s)",
        "trial 0 member 1/2 done: 3 epoch(s), val ens acc F, cached in F s",
        "trial 0 member 2/2 started: 60 epoch(s)",
        f"WARNING py.warnings: RuntimeWarning: member cache entry {entry.name} is damaged (digest mismatch); "
        "retraining it",
        *["trial 0 member 2/2 epoch"] * epochs,
        "trial 0 member 2/2 done: 60 epoch(s), val ens acc F, trained in F s",
        "trial 0 evaluating calibration (1/2)",
        "trial 0 evaluating soups (2/2)",
        events[-3],
        "trial 0 COMPLETE: value F, best F, in F s",
        "worker: finished, 1 trial(s) ended here",
    ]
    assert re.fullmatch(r"trial 0 evaluated soups \(2/2\): [1-9]\d* weight-space model\(s\) in F s", events[-3])
    # 60 epochs: the first, the last, and at most one line per 30 s of the member's training in between.
    seconds = float(re.search(r"member 2/2 done: .* in ([\d.]+) s", text).group(1))
    assert 2 <= epochs <= 2 + seconds / 30
    evaluated = float(re.search(r"evaluated soups .* in ([\d.]+) s", text).group(1))
    assert 1 <= len(models) <= 1 + evaluated / 30


def test_a_long_weight_space_model_reports_its_bn_pass_at_the_bounded_rate_and_the_cost_comes_first():
    clock, log = Clock(), io.StringIO()
    reporter = LogReporter(log, budget=1, interval=30, clock=clock)
    reporter.evaluation_planned("evaluation per trial: ~100 forward passes")
    with reporter:
        reporter.trial_started(2, {}, 2)
        reporter.evaluating("soups", 1, 1)
        reporter.weight_model_done()
        for seen in range(8, 1025, 8):  # one model's BN pass, a second a batch of 8
            clock.now += 1
            reporter.weight_model_progress(seen, 1024)
        reporter.weight_model_done()
        reporter.trial_done("COMPLETE", 0.5, 0.5)
    lines = [rest for _, rest in parse(log.getvalue())]
    assert lines[0] == "worker: up to 1 trial(s); evaluation per trial: ~100 forward passes"
    passes = [line for line in lines if " BN " in line]
    assert passes[0] == "trial 2 evaluating soups: model 2, BN 240/1024 images"  # 30 s after the first model's line
    assert len(passes) == 4 and all(" model 2, " in line for line in passes)
    assert "trial 2 evaluated soups (1/1): 2 weight-space model(s) in 128.0 s" in lines
