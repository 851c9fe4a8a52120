"""What the CLI tests share: a study small enough to run in seconds on a CPU, and the one-line error check."""

TINY = ["n_trials=3", "members=3", "finetune.epochs=3", "space.lr_mult.choices=[0.5, 2]",
        "space.epoch_mult.choices=[0.5, 1]", "prune_startup_trials=1"]
TINY_SET = [arg for item in TINY for arg in ("--set", item)]


def one_line_error(result, fragment: str) -> None:
    """A command that failed as the CLI must: non-zero, no traceback, one line on stderr naming ``fragment``."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
