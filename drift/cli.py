"""The command line of one training run (``python -m drift.train`` / ``drift-train``).

    drift-train method=drift drift.lam=1.0 seed=0            # start, resume or skip (finished) the run
    drift-train method=drift --dry-run                        # print what would happen; write nothing
    drift-train --help                                        # every field with its docstring

Arguments are ``key=value`` overrides (drift/config.py) and the flags in ``FLAGS``. An unknown flag, or
an argument that is neither, is refused with the list of known flags before anything runs; ``-h`` /
``--help`` anywhere prints the help and exits 0 without validating or starting anything.
"""

from __future__ import annotations

import json
import os
import sys

FLAGS = {
    "--dry-run": "validate the config and print it, the run directory and whether the run would start, resume "
                 "or be skipped (finished); write nothing, start nothing",
    "--quiet": "no progress bar (the heartbeat lines still go to stdout)",
    "--allow-resume-with-changes": "resume a run directory whose config or code differs (recorded as an MLflow tag)",
    "-h, --help": "this help",
}
"""Every flag ``drift-train`` accepts, with what it does."""


class UsageError(ValueError):
    """A command line that cannot be run: unknown flag, or an argument that is not key=value."""


def parse_argv(argv: list[str]) -> tuple[list[str], set[str]]:
    """Split argv into (key=value overrides, flags). ``-h``/``--help`` anywhere gives flags={'--help'}.

    Raises UsageError for an unknown flag (naming the known ones) or a bare word without '='."""
    known = {f for spec in FLAGS for f in spec.split(", ")}
    if "-h" in argv or "--help" in argv:
        return [], {"--help"}
    items, flags = [], set()
    for a in argv:
        if a.startswith("-"):
            if a not in known:
                raise UsageError(f"unknown flag {a!r}; known flags: {', '.join(sorted(known))} "
                                 "(config fields are key=value, e.g. train.iterations=10)")
            flags.add(a)
        elif "=" not in a:
            raise UsageError(f"argument {a!r} is neither key=value nor a flag; known flags: {', '.join(sorted(known))}")
        else:
            items.append(a)
    return items, flags


def help_text() -> str:
    from . import config, train

    flags = "\n".join(f"  {k}\n      {v}" for k, v in FLAGS.items())
    return f"{__doc__}\n{train.__doc__}\n{config.help_text()}\n\nFlags:\n{flags}"


def run_status(cfg) -> tuple[str, list[str]]:
    """What ``train(cfg)`` would do with the run directory, reading only: ('start' | 'resume from
    iteration k' | 'skip: finished' | 'refuse: ...', the config differences from config.json)."""
    from .rundir import RunDir, is_done
    from .train import config_changes

    run_dir = cfg.run_dir()
    if is_done(run_dir):
        return "skip: finished (DONE and final_eval.json are present)", []
    _, changes = config_changes(cfg)
    steps = RunDir(run_dir).committed_steps()
    step = steps[-1] if steps else None
    what = f"resume from iteration {step} of {cfg.train.iterations}" if step is not None else (
        "start (the directory exists without a checkpoint: its earlier logs are replaced)"
        if os.path.isdir(run_dir) else "start")
    return what, changes


def dry_run(cfg, allow_changes: bool) -> int:
    """Print the resolved config, the run directory and what a real run would do; write nothing."""
    from . import distributed as dist
    from .train import batch_plan
    from .worlds import check_available

    check_available(cfg)  # missing model files etc.: the same error a real run would give
    plan = batch_plan(cfg, dist.env_world_size())
    d = cfg.to_dict()
    d[cfg.method] = d.pop("options")  # the method's options as on the command line: <method>.<field>
    print("resolved config:")
    print(json.dumps(d, indent=1, default=str))
    print(plan.describe())
    what, changes = run_status(cfg)
    print(f"run directory: {os.path.abspath(cfg.run_dir())}")
    print(f"MLflow: {cfg.resolved_tracking_uri()} (experiment {cfg.experiment!r})")
    if changes and not what.startswith("skip"):
        verdict = "would resume anyway (--allow-resume-with-changes)" if allow_changes else \
            "would refuse (use --allow-resume-with-changes)"
        print(f"the directory's config.json differs: {verdict}:\n  " + "\n  ".join(changes))
        if not allow_changes:
            what = "refuse: " + what
    print(f"would: {what}")
    print("dry run: nothing was written")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from .config import ConfigError, make_config

    try:
        items, flags = parse_argv(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "--help" in flags or not argv:
        print(help_text())
        return 0
    allow = "--allow-resume-with-changes" in flags
    try:
        cfg = make_config(items)
        if "--dry-run" in flags:
            return dry_run(cfg, allow)
    except (ConfigError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from . import distributed as dist
    from .train import train

    dist.init()  # under torchrun: one process per rank, rank 0 prints
    if dist.is_main():
        print(f"[drift] run directory: {cfg.run_dir()}", flush=True)
    final = train(cfg, progress="--quiet" not in flags, allow_changes=allow)
    if dist.is_main():
        print(json.dumps(final["final"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
