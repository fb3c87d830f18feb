"""Metric logging: ``metrics.jsonl`` in the run directory (the source of truth) and MLflow.

MLflow defaults to a SQLite file under the output root with the artifact location under it too
(never relative to the working directory); ``MLFLOW_TRACKING_URI`` or ``tracking_uri`` override it,
'none' disables it. The MLflow client API is used (no global active run), with retries. On resume,
rows after the checkpointed step are dropped from metrics.jsonl, the checkpointed step's own row is
restored from the checkpoint if it was lost, and only steps after the last pushed step (recorded in
mlflow_run.json after every push) are pushed again, so every (key, step) appears once in both. A push
cut off by a crash (recorded as ``inflight`` before it starts) is completed on resume with only the
keys MLflow does not hold yet for that step.

Retries: transient errors (connection errors, timeouts, SQLite "database is locked" which MLflow reports
as TEMPORARILY_UNAVAILABLE, a server's exhausted connection pool) are retried with backoff and counted in
``RETRIES``; an error no retry can fix (``PERMANENT`` codes, e.g. "Changing param values is not
allowed") is raised at once, verbatim.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import time
import warnings

class MetricsFileError(ValueError):
    """A metrics.jsonl is damaged beyond a torn last line; the message names the file and line."""


class TrackingStateError(ValueError):
    """A run directory's mlflow_run.json is unreadable; the message names the file."""


RETRIES = {"count": 0}
"""Retries of MLflow calls in this process (a transient failure that a later try got through)."""


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


ATTEMPT_PARAMS = ("out", "tracking_uri", "threads")
"""Params that may differ between attempts of one run (as the run directory's config check)."""

PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
             "PERMISSION_DENIED", "UNAUTHENTICATED", "ENDPOINT_NOT_FOUND", "FEATURE_DISABLED"}
"""MLflow error codes that a retry cannot fix (e.g. "Changing param values is not allowed")."""


def is_transient(e: Exception) -> bool:
    """True unless ``e`` is an MLflow error with a code in PERMANENT. Not by HTTP status: an MLflow
    server whose database connection pool is exhausted answers 400 BAD_REQUEST ("QueuePool limit
    ... reached", measured with 32 writers), which a later try gets through."""
    return getattr(e, "error_code", None) not in PERMANENT


def _retry(fn, what: str, tries: int = 6):
    delay = 0.5
    for i in range(tries):
        try:
            return fn()
        except Exception as e:  # mlflow raises MlflowException / requests errors when busy
            if i == tries - 1 or not is_transient(e):
                raise
            RETRIES["count"] += 1
            wait = delay * (0.5 + random.random())  # jitter: many writers must not retry in lockstep
            warnings.warn(f"MLflow {what} failed ({type(e).__name__}: {str(e)[:300]}); retrying in {wait:.1f}s")
            time.sleep(wait)
            delay = min(delay * 2, 8)


@contextlib.contextmanager
def _sqlite_init_lock(uri: str):
    """Exclusive flock on ``<db file>.lock`` next to a SQLite database (no-op for other stores).

    MLflow's tracking store creates the tables of a fresh database without a lock (only its
    migration helper locks, in the node-local temp dir), so simultaneous first use can fail with
    "table already exists" / "duplicate column". The lock sits next to the database file, so it is
    shared by every process that can open the database."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = uri[len("sqlite:///"):]
    os.makedirs(os.path.dirname(os.path.abspath(db)) or ".", exist_ok=True)
    fd = os.open(os.path.abspath(db) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def init_mlflow_experiment(uri: str, experiment: str, artifact_root: str | None) -> str:
    """Create (or find) the experiment; returns its id. Also performs first-time DB initialisation,
    under a file lock next to a SQLite database (safe when many runs start at once on a fresh DB)."""
    from mlflow.tracking import MlflowClient

    with _sqlite_init_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        loc = None
        if artifact_root and not uri.startswith(("http://", "https://")):
            loc = "file://" + os.path.abspath(os.path.join(artifact_root, experiment))
        try:
            return client.create_experiment(experiment, artifact_location=loc)
        except Exception:
            exp = client.get_experiment_by_name(experiment)  # created concurrently by another run
            if exp is None:
                raise
            return exp.experiment_id


class Tracker:
    """metrics.jsonl + MLflow for one run directory.

    The MLflow run id and the last step pushed to MLflow live in ``<run_dir>/mlflow_run.json``,
    rewritten atomically before and after every push, so a restart never pushes a (key, step) twice
    whatever the checkpoint timing or the crash point. Every restart reopens the run dir's MLflow run
    (and drops a stale ``termination_reason`` tag left by the interrupted attempt), also a fresh start
    (an attempt killed before its first checkpoint): its steps up to ``last_pushed_step`` are already
    in MLflow and are not pushed again. Only a fresh start whose params differ from the run's (a
    config change allowed before any checkpoint) closes and deletes the old run and opens a new one.
    """

    def __init__(self, run_dir: str, uri: str, experiment: str, run_name: str, params: dict, artifact_root: str,
                 resume_step: int | None = None, tags: dict | None = None):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.state_path = os.path.join(run_dir, "mlflow_run.json")
        self.uri = uri
        if resume_step is not None:
            self._truncate(resume_step)
        elif os.path.exists(self.path):
            os.remove(self.path)  # a fresh start: no rows from an earlier, uncheckpointed attempt
        prev = _read_state(self.state_path)
        self.client = None
        self.run_id = None
        self.last_pushed_step = -1
        self.inflight: dict | None = None  # {"step", "keys"} while a push is under way
        self._present: tuple[int, set[str]] | None = None  # keys MLflow already holds for a cut-off push
        if uri.lower() == "none":
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp_id = _retry(lambda: init_mlflow_experiment(uri, experiment, artifact_root), "experiment init")
        reopen = bool(prev.get("run_id")) and prev.get("uri") == uri
        if reopen and resume_step is None:  # a restart before the first checkpoint: same run, if it fits
            reopen = self._fresh_start_may_reopen(prev["run_id"], params)
        if reopen:  # one MLflow run per run directory, reopened on every restart
            self.run_id, self.last_pushed_step = prev["run_id"], prev.get("last_pushed_step", -1)
            cut = prev.get("inflight")
            if cut and cut["step"] > self.last_pushed_step:  # a push was cut off: what did MLflow get?
                got = {k for k in cut["keys"]
                       if any(m.step == cut["step"] for m in
                              _retry(lambda k=k: self.client.get_metric_history(self.run_id, k), "read metric"))}
                self._present = (cut["step"], got)
            _retry(lambda: self.client.update_run(self.run_id, status="RUNNING"), "reopen run")
            run = _retry(lambda: self.client.get_run(self.run_id), "get_run")
            if "termination_reason" in run.data.tags:  # from the interrupted attempt; this one is running
                _retry(lambda: self.client.delete_tag(self.run_id, "termination_reason"), "delete_tag")
            for k, v in (tags or {}).items():
                _retry(lambda k=k, v=v: self.client.set_tag(self.run_id, k, v), "set_tag")
            if resume_step is None:  # the earlier attempt may have died before logging them all
                self._log_params({k: v for k, v in flatten(params).items() if k not in run.data.params})
            return
        run = _retry(lambda: self.client.create_run(exp_id, run_name=run_name, tags=tags or {}), "create_run")
        self.run_id = run.info.run_id
        self._save_state()
        self._log_params(params)

    def _log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = sorted(flatten(params).items())
        for i in range(0, len(items), 100):
            chunk = [Param(k, v[:6000]) for k, v in items[i : i + 100]]
            _retry(lambda c=chunk: self.client.log_batch(self.run_id, params=c), "log params")

    def _fresh_start_may_reopen(self, run_id: str, params: dict) -> bool:
        """A restart with no checkpoint over a run dir whose earlier attempt opened ``run_id``: reopen
        that run (its rows up to ``last_pushed_step`` are the ones this attempt recomputes) unless it is
        gone or was logged with other params (a fresh start allowed to change the config); such a run
        is closed (KILLED, with a termination_reason) and deleted, so none is left RUNNING."""
        try:
            run = self.client.get_run(run_id)
        except Exception as e:  # noqa: BLE001 -- deleted for good, or another store
            warnings.warn(f"MLflow run {run_id} of an earlier attempt is not readable ({e}); opening a new one")
            return False
        if run.info.lifecycle_stage != "active":
            return False
        ours = {k: v[:6000] for k, v in flatten(params).items() if k not in ATTEMPT_PARAMS}
        changed = sorted(k for k, v in run.data.params.items() if k in ours and ours[k] != v)
        if not changed:
            return True
        warnings.warn(f"MLflow run {run_id} of an earlier attempt has other params ({', '.join(changed[:5])}); "
                      "closing it and opening a new run")
        _retry(lambda: self.client.set_tag(run_id, "termination_reason",
                                           f"superseded by a fresh start with changed params: {', '.join(changed[:20])}"),
               "set_tag")
        _retry(lambda: self.client.set_terminated(run_id, status="KILLED"), "set_terminated")
        _retry(lambda: self.client.delete_run(run_id), "delete_run")
        return False

    def _save_state(self) -> None:
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"uri": self.uri, "run_id": self.run_id, "last_pushed_step": self.last_pushed_step,
                       "inflight": self.inflight}, f)
        os.replace(tmp, self.state_path)

    def last_step(self) -> int:
        """The last step present in metrics.jsonl (-1 if none)."""
        rows = _read_rows(self.path)
        return rows[-1]["step"] if rows else -1

    def _truncate(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        rows = [json.dumps(r) + "\n" for r in _read_rows(self.path) if r["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one row to metrics.jsonl (flushed), then push to MLflow if step > last pushed step."""
        clean = {k: (float(v) if v is not None else float("nan")) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}) + "\n")
            f.flush()
        if self.client is not None and step > self.last_pushed_step:
            from mlflow.entities import Metric

            skip = self._present[1] if self._present and self._present[0] == step else set()
            self.inflight = {"step": step, "keys": sorted(clean)}
            self._save_state()  # written ahead: a crash during the push is detected on resume
            ts = int(time.time() * 1000)
            ms = [Metric(k, v, ts, step) for k, v in sorted(clean.items()) if k not in skip]
            for i in range(0, len(ms), 200):
                _retry(lambda c=ms[i : i + 200]: self.client.log_batch(self.run_id, metrics=c), "log metrics")
            self.last_pushed_step, self.inflight = step, None
            self._save_state()

    def log_artifact(self, path: str, subdir: str | None = None) -> None:
        if self.client is not None:
            _retry(lambda: self.client.log_artifact(self.run_id, path, subdir), "log_artifact")

    def set_tag(self, key: str, value: str) -> None:
        if self.client is not None:
            _retry(lambda: self.client.set_tag(self.run_id, key, value), "set_tag")

    def finish(self, status: str = "FINISHED") -> None:
        if self.client is not None:
            _retry(lambda: self.client.set_terminated(self.run_id, status=status), "set_terminated")


def _read_state(path: str) -> dict:
    """mlflow_run.json ({} if absent). It is replaced atomically, so damage is outside interference: a
    TrackingStateError naming the file, not a guess (a guess could open a second MLflow run)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            st = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrackingStateError(f"{path}: unreadable ({type(e).__name__}: {e}); it names this run's MLflow run. "
                                 "Restore it, or delete it to open a new MLflow run") from None
    kinds = {"uri": str, "run_id": (str, type(None)), "last_pushed_step": int, "inflight": (dict, type(None))}
    if not isinstance(st, dict) or any(k in st and not isinstance(st[k], t) for k, t in kinds.items()) \
            or isinstance(st.get("last_pushed_step"), bool) or (st.get("inflight") is not None and not (
                type(st["inflight"].get("step")) is int and isinstance(st["inflight"].get("keys"), list))):
        raise TrackingStateError(f"{path}: not a tracker state ({json.dumps(st)[:120]}); restore it, or delete it "
                                 "to open a new MLflow run")
    return st


def _read_rows(path: str) -> list[dict]:
    """JSON rows of a metrics.jsonl. A torn last line (a crash mid-write) is dropped with a warning;
    anything else malformed (bad JSON or bytes elsewhere, a row that is not an object with an integer
    "step", steps not increasing) raises MetricsFileError naming the file and line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = [(i, ln) for i, ln in enumerate(f.read().split(b"\n"), 1) if ln.strip()]
    rows = []
    for n, (i, ln) in enumerate(lines):
        try:
            row = json.loads(ln.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if n == len(lines) - 1:
                warnings.warn(f"{path}: dropping a torn last line (a crash while writing it): "
                              f"{ln[:80].decode('utf-8', 'replace')!r}")
                break
            raise MetricsFileError(f"{path}: line {i} is not valid JSON ({e})") from None
        if not isinstance(row, dict) or type(row.get("step")) is not int:
            raise MetricsFileError(f"{path}: line {i} is not a metrics row (an object with an integer \"step\"): "
                                   f"{ln[:80].decode('utf-8', 'replace')!r}")
        if rows and row["step"] <= rows[-1]["step"]:
            raise MetricsFileError(f"{path}: line {i}: step {row['step']} after step {rows[-1]['step']} (steps must "
                                   "increase; the file is damaged)")
        rows.append(row)
    return rows


def read_metrics(run_dir: str) -> list[dict]:
    """Rows of a run's metrics.jsonl ('nan'/'inf' strings back to floats); a torn last line is dropped."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no metrics (the run never logged a step)")
    return [{k: (float(v) if isinstance(v, str) else v) for k, v in r.items()}
            for r in _read_rows(path)]
