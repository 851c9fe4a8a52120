"""Options shared by the CLI tests: a study small enough to run in seconds on a CPU."""

TINY = ["n_trials=3", "members=3", "finetune.epochs=3", "space.lr_mult.choices=[0.5, 2]",
        "space.epoch_mult.choices=[0.5, 1]", "prune_startup_trials=1"]
TINY_SET = [arg for item in TINY for arg in ("--set", item)]
