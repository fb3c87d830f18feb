"""The run directory: the files a run leaves on disk, the one reader of its metrics, and its name.

These files are the interface between training (drift.train, drift.launch, drift.tracking,
drift.checkpoint), the sweep (experiments/) and the analysis (analysis/): each file's name is written
here and only here. This module imports neither torch nor MLflow, so analysis/ and the sweep can use it
cheaply. docs/run_directory.md describes every file, who writes it and who reads it.

    <out>/<experiment>/<method>/<science hash>/seed<k>/     RunDir.path  (RunDir.of(...))
        config.json          the resolved config + model_fingerprint (drift.train.prepare_run_dir)
        metrics.jsonl        one JSON row per logged step (drift.tracking.Tracker)
        mlflow_run.json      MLflow run id, last pushed step, push in flight (drift.tracking.Tracker)
        samples/eval_NNNNNN.png  evaluation grid at step N (drift.train)
        evals/per_prompt_NNNNNN.json  every eval metric's per-prompt values at step N (drift.train)
        checkpoints/step_NNNNNN/ a committed checkpoint: its manifest.json is written last (drift.checkpoint)
        final_eval.json      first and last evaluation rows (drift.train, at the end)
        DONE                 written last: the run finished (drift.train)
        LOCK                 flock held while a job trains; its text names the holder (drift.launch)
        launch.jsonl         one row per job start / finish (drift.launch)
        JOB.json             the executor and job id that last launched the point (experiments/sweep.py)
        stdout.log           the local executor's log of the point (experiments/sweep.py, collapse.py)
        HELD, RELEASE        the DRIFT_LAUNCH_HOLD test hook's handshake (drift.launch)

    <out>/base_eval_cache/<key>.lock                    flock held while a run computes that entry
    <out>/base_eval_cache/<key>/                        BaseEvalEntry.of(out, key): one shared step-0 evaluation
        key.json             what the key was computed from (drift.train.base_eval_key)
        eval.json            the evaluation's metrics
        files/...            the evaluation's step-0 files, by their path in a run directory
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

NON_SCIENCE_KEYS = ("seed", "out", "tracking_uri", "experiment", "threads", "device")
"""Top-level config keys that do not change what a run computes: the seed (a run directory's last level,
not its hash), where outputs go, the thread count and the shapes world's device. They are left out of ``science_hash``; a run
directory accepts a resume that changes only them; a sweep sets them itself (a grid may not); analysis
leaves them out of a run's compared settings."""

FINGERPRINT = "model_fingerprint"
"""config.json's record of the input files' content (a resume check, not part of the run's identity)."""

SWEEP_INDEX = "sweep.json"
"""The experiment folder's index of a sweep's points (<out>/<experiment>/sweep.json), read by analysis/."""


def write_json_atomic(path: str, obj) -> None:
    """Write ``obj`` as JSON (indent 1; objects JSON cannot hold as their str) to a temporary file beside ``path``,
    then rename it over ``path``: a reader sees the old file or the new one, never a torn one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def science_hash(config: dict) -> str:
    """The run's config hash, the run directory's fourth level: the first 10 hex digits of
    sha256(json.dumps(config without NON_SCIENCE_KEYS and model_fingerprint, sort_keys=True, default=str)).

    ``config`` is ``RunConfig.to_dict()`` or a run directory's config.json (the same, plus the fingerprint);
    analysis/ also applies it to an MLflow run's flat string params (a different value, stable per config)."""
    d = {k: v for k, v in config.items() if k not in NON_SCIENCE_KEYS and k != FINGERPRINT}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


BASE_EVAL_CACHE = "base_eval_cache"
"""<out>/base_eval_cache/: the base-model (step-0) evaluations shared by the runs under <out> (BaseEvalEntry)."""

NON_FINITE = ("nan", "inf", "-inf")
"""How metrics.jsonl writes non-finite values (JSON has no NaN): as these strings."""


class MetricsFileError(ValueError):
    """A JSON-lines file of a run is damaged beyond a torn last line; the message names the file and line."""


def read_jsonl_torn(path: str, decode: bool = True, metrics: bool = True) -> tuple[list[dict], str | None]:
    """(rows, the torn last line or None) of a JSON-lines file of a run: the one reader.

    Lines are split on newline bytes only (a JSON string may hold U+2028 or \\x1c); blank lines are
    skipped. A last line that is not valid UTF-8 JSON (a crash while writing it) is dropped and described
    in the second value; a malformed line elsewhere raises MetricsFileError naming the file and the
    (physical) line. With ``metrics`` every row must be an object with an integer "step", and the steps
    must increase. With ``decode`` the 'nan' / 'inf' / '-inf' strings (how non-finite values are
    written) become floats; without it the rows are returned as written (to rewrite them unchanged).
    FileNotFoundError if the file is absent."""
    with open(path, "rb") as f:
        lines = [(i, ln) for i, ln in enumerate(f.read().split(b"\n"), 1) if ln.strip()]
    rows: list[dict] = []
    for n, (i, ln) in enumerate(lines):
        try:
            row = json.loads(ln.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if n == len(lines) - 1:
                return rows, f"line {i}: {ln[:80].decode('utf-8', 'replace')!r}"
            raise MetricsFileError(f"{path}: line {i} is not valid JSON ({e})") from None
        if metrics:
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                raise MetricsFileError(f"{path}: line {i} is not a metrics row (an object with an integer \"step\"): "
                                       f"{ln[:80].decode('utf-8', 'replace')!r}")
            if rows and row["step"] <= rows[-1]["step"]:
                raise MetricsFileError(f"{path}: line {i}: step {row['step']} after step {rows[-1]['step']} (steps "
                                       "must increase; the file is damaged)")
        if decode:
            bad = [k for k, v in row.items() if isinstance(v, str) and v not in NON_FINITE]
            if bad:
                raise MetricsFileError(f"{path}: line {i}: {bad[0]!r} holds the string {row[bad[0]]!r} (values are "
                                       f"numbers, or one of {NON_FINITE} for non-finite ones)")
            row = {k: (float(v) if isinstance(v, str) else v) for k, v in row.items()}
        rows.append(row)
    return rows, None


def read_jsonl(path: str, decode: bool = True, metrics: bool = True) -> list[dict]:
    """``read_jsonl_torn``'s rows; a torn last line is dropped with a warning."""
    rows, torn = read_jsonl_torn(path, decode, metrics)
    if torn is not None:
        warnings.warn(f"{path}: dropping a torn last line (a crash while writing it): {torn}")
    return rows


class RunDir:
    """One run directory: the path of each of its files, and what can be read from them without torch."""

    CONFIG, METRICS, MLFLOW_STATE = "config.json", "metrics.jsonl", "mlflow_run.json"
    FINAL_EVAL, DONE = "final_eval.json", "DONE"
    SAMPLES, CHECKPOINTS, CHECKPOINT_PREFIX, MANIFEST = "samples", "checkpoints", "step_", "manifest.json"
    LOCK, LAUNCH_LOG, JOB_MARKER, STDOUT_LOG = "LOCK", "launch.jsonl", "JOB.json", "stdout.log"
    HELD, RELEASE = "HELD", "RELEASE"
    EXPORT = "export"
    EVALS, PER_PROMPT_PREFIX = "evals", "per_prompt_"
    EVAL_STEP_DIRS = (SAMPLES, EVALS)
    """The folders that hold an evaluation's per-step files: every such file's name ends in _NNNNNN.<ext>
    (the 6-digit step), so ``eval_step_files`` finds whatever files an evaluation writes for a step."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    @classmethod
    def of(cls, out: str, experiment: str, method: str, config_hash: str, seed: int) -> "RunDir":
        """<out>/<experiment>/<method>/<config hash>/seed<k>: deterministic, no timestamps."""
        return cls(os.path.join(out, experiment, method, config_hash, f"seed{seed}"))

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ---- the files --------------------------------------------------------------------------------
    config = property(lambda self: self.file(self.CONFIG), doc="config.json: the resolved config + model_fingerprint")
    metrics = property(lambda self: self.file(self.METRICS), doc="metrics.jsonl: one row per logged step")
    mlflow_state = property(lambda self: self.file(self.MLFLOW_STATE), doc="mlflow_run.json: the Tracker's state")
    final_eval = property(lambda self: self.file(self.FINAL_EVAL), doc="final_eval.json: first and last eval rows")
    done = property(lambda self: self.file(self.DONE), doc="DONE: written last when the run finished")
    samples = property(lambda self: self.file(self.SAMPLES), doc="samples/: the evaluation grids")
    checkpoints = property(lambda self: self.file(self.CHECKPOINTS), doc="checkpoints/: step_NNNNNN folders")
    lock = property(lambda self: self.file(self.LOCK), doc="LOCK: flock held while a job trains")
    launch_log = property(lambda self: self.file(self.LAUNCH_LOG), doc="launch.jsonl: job starts and finishes")
    job_marker = property(lambda self: self.file(self.JOB_MARKER), doc="JOB.json: the job that last launched it")
    stdout_log = property(lambda self: self.file(self.STDOUT_LOG), doc="stdout.log: the local executor's log")
    held = property(lambda self: self.file(self.HELD), doc="HELD: the hold test hook is waiting")
    release = property(lambda self: self.file(self.RELEASE), doc="RELEASE: lets a held run go on")
    export = property(lambda self: self.file(self.EXPORT), doc="export/: the policy as LoRA / model folders")
    evals = property(lambda self: self.file(self.EVALS), doc="evals/: per-prompt evaluation metrics, one file per eval")

    def eval_grid(self, step: int) -> str:
        """samples/eval_NNNNNN.png: the evaluation image grid at ``step``."""
        return os.path.join(self.samples, f"eval_{step:06d}.png")

    def eval_per_prompt(self, step: int) -> str:
        """evals/per_prompt_NNNNNN.json: every evaluation metric's per-prompt values at ``step``."""
        return os.path.join(self.evals, f"{self.PER_PROMPT_PREFIX}{step:06d}.json")

    def write_eval_per_prompt(self, step: int, prompts: list[str], metrics: dict[str, list[float]]) -> str:
        """Write ``eval_per_prompt(step)`` atomically (a temporary file, then a rename):
        {"step": step, "prompts": [P texts], "metrics": {key: [P values]}}; non-finite values as NON_FINITE strings.
        ValueError naming the key if a list does not hold one value per prompt. Returns the path."""
        for k, v in metrics.items():
            if len(v) != len(prompts):
                raise ValueError(f"per-prompt metric {k!r} has {len(v)} values for {len(prompts)} prompts")
        enc = {k: [x if x == x and abs(x) != float("inf") else str(x) for x in map(float, v)] for k, v in metrics.items()}
        path = self.eval_per_prompt(step)
        os.makedirs(self.evals, exist_ok=True)
        write_json_atomic(path, {"step": step, "prompts": list(prompts), "metrics": enc})
        return path

    def read_eval_per_prompt(self, step: int) -> dict:
        """``eval_per_prompt(step)`` as written, with the non-finite strings back as floats (FileNotFoundError if absent)."""
        with open(self.eval_per_prompt(step)) as f:
            d = json.load(f)
        d["metrics"] = {k: [float(x) if isinstance(x, str) else x for x in v] for k, v in d["metrics"].items()}
        return d

    def eval_per_prompt_steps(self) -> list[int]:
        """Steps that have a per-prompt evaluation file, oldest first."""
        if not os.path.isdir(self.evals):
            return []
        pre, names = self.PER_PROMPT_PREFIX, os.listdir(self.evals)
        steps = [n[len(pre):-5] for n in names if n.startswith(pre) and n.endswith(".json")]
        return sorted(int(s) for s in steps if s.isascii() and s.isdigit())

    def eval_step_files(self, step: int) -> list[str]:
        """The files an evaluation wrote for ``step``, as paths relative to the run directory (sorted): every
        file under ``EVAL_STEP_DIRS`` whose name, without its extension, ends in _NNNNNN."""
        tag, out = f"_{step:06d}", []
        for d in self.EVAL_STEP_DIRS:
            root = self.file(d)
            for dirpath, _, names in os.walk(root):
                out += [os.path.relpath(os.path.join(dirpath, n), self.path) for n in names
                        if os.path.splitext(n)[0].endswith(tag) and ".tmp" not in n]
        return sorted(out)

    @classmethod
    def checkpoint_name(cls, step: int) -> str:
        """step_NNNNNN: the name of a checkpoint folder (sorts by step)."""
        return f"{cls.CHECKPOINT_PREFIX}{step:06d}"

    def checkpoint(self, step: int) -> str:
        """checkpoints/step_NNNNNN: the checkpoint folder of ``step``."""
        return os.path.join(self.checkpoints, self.checkpoint_name(step))

    # ---- what can be read -------------------------------------------------------------------------
    def is_done(self) -> bool:
        """The run finished: DONE and final_eval.json exist (a sweep skips it, a rerun returns at once)."""
        return os.path.exists(self.done) and os.path.exists(self.final_eval)

    def read_config(self) -> dict:
        """config.json as a dict (OSError / json.JSONDecodeError if missing or unreadable)."""
        with open(self.config) as f:
            return json.load(f)

    def read_metrics(self, decode: bool = True) -> list[dict]:
        """metrics.jsonl's rows (``read_jsonl``); FileNotFoundError naming the file if the run never logged."""
        if not os.path.exists(self.metrics):
            raise FileNotFoundError(f"{self.metrics}: no metrics (the run never logged a step)")
        return read_jsonl(self.metrics, decode)

    def last_step(self) -> int:
        """The last step in metrics.jsonl (a torn last line does not count); -1 if it holds none."""
        rows = read_jsonl(self.metrics, decode=False) if os.path.exists(self.metrics) else []
        return int(rows[-1]["step"]) if rows else -1

    def committed_steps(self) -> list[int]:
        """Steps of the committed checkpoints (those with a manifest), oldest first, without loading them."""
        if not os.path.isdir(self.checkpoints):
            return []
        pre = self.CHECKPOINT_PREFIX
        steps = [d[len(pre):] for d in os.listdir(self.checkpoints)
                 if d.startswith(pre) and os.path.exists(os.path.join(self.checkpoints, d, self.MANIFEST))]
        return sorted(int(s) for s in steps if s.isascii() and s.isdigit())  # a stray step_x folder is no checkpoint


class BaseEvalEntry:
    """One shared base-model evaluation: <out>/base_eval_cache/<key>/ (key.json, eval.json, files/). Complete
    when it exists: it is written in a temporary folder beside it and renamed into place (drift.train.BaseEvalCache)."""

    KEY, METRICS, FILES = "key.json", "eval.json", "files"

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    @classmethod
    def of(cls, out: str, key: str) -> "BaseEvalEntry":
        return cls(os.path.join(out, BASE_EVAL_CACHE, key))

    lock = property(lambda self: self.path + ".lock", doc="<key>.lock: flock held while a run computes the entry")
    key_record = property(lambda self: os.path.join(self.path, self.KEY), doc="key.json: the key's inputs")
    metrics = property(lambda self: os.path.join(self.path, self.METRICS), doc="eval.json: the metrics")
    files = property(lambda self: os.path.join(self.path, self.FILES), doc="files/: the step-0 files")


def is_done(run_dir: str | os.PathLike) -> bool:
    """``RunDir(run_dir).is_done()``."""
    return RunDir(run_dir).is_done()


def last_step(run_dir: str | os.PathLike) -> int:
    """``RunDir(run_dir).last_step()``."""
    return RunDir(run_dir).last_step()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """``RunDir(run_dir).read_metrics()``: the rows of a run's metrics.jsonl, non-finite values as floats."""
    return RunDir(run_dir).read_metrics()
