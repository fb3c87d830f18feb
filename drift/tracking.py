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
allowed", and a server's 401/403) is raised at once, verbatim.

Authentication (an MLflow server with basic auth, ``slurm/mlflow_server.sh``): the client takes the
credentials where MLflow does, on the machine it runs on (the compute node): ``MLFLOW_TRACKING_USERNAME``
/ ``MLFLOW_TRACKING_PASSWORD``, else ``~/.mlflow/credentials``; never from the URI, config or params.
``check_tracking_access`` is the preflight: one authenticated read before any work, raising
``TrackingAccessError`` that names the variable or file to set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import time
import urllib.parse
import warnings

from .rundir import NON_SCIENCE_KEYS, RunDir, read_jsonl


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


def run_params(cfg) -> dict:
    """The run's MLflow params: the config as on the command line, so the method's options are
    ``<method>.<field>`` (e.g. ``flow_grpo_kl.beta``, ``diverse_grpo.beta``), never an ambiguous ``options.*``."""
    d = cfg.to_dict()
    d[cfg.method] = d.pop("options")
    return d


def run_tags(cfg, run_dir: str, extra: dict | None = None) -> dict[str, str]:
    """The run's MLflow tags: method, seed, run directory, experiment, code hash and git sha (of the
    code on disk, ``drift.launch.code_state``), plus ``extra`` from the sweep (grid, arm, world,
    ``knob.<key>`` for each swept value, and the submitted code's hash)."""
    from .provenance import code_state

    code = code_state()
    tags = {"method": cfg.method, "seed": str(cfg.seed), "run_dir": os.path.abspath(run_dir),
            "experiment": cfg.experiment, "world": cfg.model.world, "code_hash": code["code_hash"],
            "git_sha": code["git_sha"] + (" (dirty)" if code["git_dirty"] else "")}
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags

ATTEMPT_PARAMS = NON_SCIENCE_KEYS
"""Params that may differ between attempts of one run: the non-science keys, as the run directory's config
check (seed and experiment are parts of the run directory's path, so they never differ within one)."""

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


CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
"""The environment variables an MLflow client takes a server's basic-auth credentials from."""


class TrackingAccessError(RuntimeError):
    """The MLflow server refused this client (no, wrong or insufficient credentials), or the tracking
    URI holds credentials; raised before any work starts, never retried."""


def credentials_file() -> str:
    """MLflow's credentials file (``[mlflow] mlflow_tracking_username / mlflow_tracking_password``),
    which its client reads on every request when the variables are not set."""
    return os.path.expanduser("~/.mlflow/credentials")


def mlflow_credentials() -> tuple[str | None, str | None, str]:
    """(username, password, where) as MLflow's client resolves them: each variable of CREDENTIAL_VARS
    if set, else its key in ``credentials_file()``. ``where`` names the sources (for messages; it never
    holds the password)."""
    import configparser

    path = credentials_file()
    cp = configparser.ConfigParser()
    if os.path.exists(path):
        cp.read(path)
    got, where = [], []
    for var in CREDENTIAL_VARS:
        value = os.environ.get(var) or cp.get("mlflow", var.lower(), fallback=None)
        got.append(value or None)
        if value:
            where.append(var if os.environ.get(var) else path)
    return got[0], got[1], " and ".join(dict.fromkeys(where)) or "nowhere"


def check_tracking_uri(uri: str) -> None:
    """TrackingAccessError for a URI with credentials in it (``user:password@host``): the URI is written
    to config.json, sweep.json and the run's params. The message leaves them out."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        raise TrackingAccessError(
            f"the tracking URI {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path} "
            "holds credentials (user:password@): a URI is written to config.json, sweep.json and the run's "
            f"params. Pass it without them and set {' / '.join(CREDENTIAL_VARS)} or {credentials_file()} (mode 0600)")


def check_tracking_access(uri: str) -> None:
    """Preflight before any work: for an http(s) MLflow server, one authenticated read.

    Raises TrackingAccessError, at once (401/403 are never retried, and nothing falls back to another
    store), with a message naming the variable or file to set; also for credentials in the URI
    (``check_tracking_uri``). Connection errors are retried like every MLflow call, then raised.
    A no-op for other stores."""
    check_tracking_uri(uri)
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    from mlflow.tracking import MlflowClient

    try:
        _retry(lambda: MlflowClient(tracking_uri=uri).search_experiments(max_results=1), "access check")
    except Exception as e:
        code = getattr(e, "error_code", None)
        if code not in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise
        user, password, where = mlflow_credentials()
        how = (f"set {CREDENTIAL_VARS[0]} and {CREDENTIAL_VARS[1]}, or write them to {credentials_file()} "
               "(mode 0600; slurm/mlflow_server.sh start creates it for the server's owner; see docs/sweeps.md)")
        if code == "PERMISSION_DENIED":
            msg = (f"MLflow server {uri} denied user {user!r} (credentials from {where}) access (403): ask the "
                   f"server's admin for a permission, or use other credentials: {how}")
        elif not (user and password):
            missing = [v for v, x in zip(CREDENTIAL_VARS, (user, password)) if not x]
            msg = (f"MLflow server {uri} requires authentication (401) and no {' / '.join(missing)} was found "
                   f"(neither the variable nor {credentials_file()}): {how}")
        else:
            msg = (f"MLflow server {uri} rejected the credentials of user {user!r} from {where} (401: wrong "
                   f"password or unknown user; rotated?): fix {CREDENTIAL_VARS[1]} or {credentials_file()}")
        raise TrackingAccessError(msg) from None


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
        self.rundir = RunDir(run_dir)
        self.path, self.state_path = self.rundir.metrics, self.rundir.mlflow_state
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
        check_tracking_access(uri)  # no, wrong or refused credentials: a clear error before anything else
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
        return self.rundir.last_step()

    def _truncate(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        rows = [json.dumps(r) + "\n" for r in read_jsonl(self.path, decode=False) if r["step"] <= step]
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
