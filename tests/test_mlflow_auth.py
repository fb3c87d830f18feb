"""The authenticated MLflow server (slurm/mlflow_server.sh) against a real server on 127.0.0.1.

One server per module (its start is the cost), on a random free port, with its own HOME (where the
script writes the admin credentials, ~/.mlflow/credentials) and its own folder (DBs, log):

* start: credentials random, in a 0600 file, never printed; the auth DB beside the tracking DB;
  an anonymous request gets 401 (urllib, as curl would);
* a second user (``add-user``, read-only by default) can read the experiment but not delete it;
* a wrong or missing credential stops the sweep (nothing written or submitted) and a run (before
  training, no retry) with a message naming the variable or file to set;
* an authenticated sweep of two smoke-grid points logs every run, and no credential appears in any file it
  wrote (runs, sweep.json, logs, MLflow artifacts, the server's folder) nor in a run's params/tags;
* on Slurm (skipped without a cluster, required in CI): the password is not handed to sbatch, so it
  is in none of submitit's files (sbatch script, pickles, logs) nor in Slurm's state directory.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCRIPT = os.path.join(ROOT, "slurm", "mlflow_server.sh")
SWEEP = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py")]
CRED_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    uri: str
    env: dict  # the script's environment (HOME, DRIFT_MLFLOW_*)
    home: str
    folder: str
    artifacts: str
    user: str
    password: str
    start_output: str

    def secrets(self) -> list[bytes]:
        """What must never appear in a file: the password, and the Authorization header's value."""
        return [self.password.encode(), base64.b64encode(f"{self.user}:{self.password}".encode())]

    def client_env(self, **extra) -> dict:
        """An environment for a sweep or run: this server's HOME (its credentials file), no variables."""
        env = {k: v for k, v in os.environ.items() if k not in (*CRED_VARS, "MLFLOW_TRACKING_URI")}
        # a fresh HOME would rebuild matplotlib's font cache in every process
        env.setdefault("MPLCONFIGDIR", os.path.join(os.path.expanduser("~"), ".config", "matplotlib"))
        return {**env, "HOME": self.home, **extra}


def _script(server_env: dict, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], env=server_env, capture_output=True, text=True, timeout=timeout,
                          cwd=server_env["HOME"])


def _read_credentials(path: str) -> tuple[str, str]:
    import configparser

    cp = configparser.ConfigParser()
    cp.read(path)
    return cp["mlflow"]["mlflow_tracking_username"], cp["mlflow"]["mlflow_tracking_password"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow_auth")
    home, folder, art = tmp / "home", tmp / "server", tmp / "artifacts"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (*CRED_VARS, "MLFLOW_TRACKING_URI")}
    env.update(HOME=str(home), DRIFT_MLFLOW_DIR=str(folder), DRIFT_MLFLOW_ARTIFACTS=str(art),
               DRIFT_MLFLOW_HOST="127.0.0.1", DRIFT_MLFLOW_PORT=str(_free_port()),
               MLFLOW=os.path.join(os.path.dirname(sys.executable), "mlflow"))
    up = _script(env, "start", timeout=300)
    pid_file = folder / "mlflow.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        uri = (folder / "uri").read_text().strip()
        assert uri.startswith("http://127.0.0.1:"), uri
        user, password = _read_credentials(str(home / ".mlflow" / "credentials"))
        yield Server(uri, env, str(home), str(folder), str(art), user, password, up.stdout + up.stderr)
    finally:
        _script(env, "stop", timeout=60)
        if pid is not None:
            try:
                os.kill(pid, 9)  # still there after the script's SIGTERM
            except ProcessLookupError:
                pass


@pytest.fixture
def as_admin(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.password)
    return server


def _http(url: str, method: str = "GET", auth: tuple[str, str] | None = None, body: dict | None = None) -> int:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _leaks(roots: list[str], secrets: list[bytes]) -> list[str]:
    """Files under ``roots`` that contain any of ``secrets`` (every file, binary ones included)."""
    found = []
    for root in roots:
        for d, _, files in os.walk(root):
            for n in files:
                p = os.path.join(d, n)
                try:
                    with open(p, "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                if any(s in data for s in secrets):
                    found.append(p)
    return found


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ------------------------------------------------------------------------------------------------
def test_start_creates_private_credentials_and_refuses_anonymous_requests(server):
    cred = os.path.join(server.home, ".mlflow", "credentials")
    assert _mode(cred) == 0o600 and _mode(os.path.dirname(cred)) == 0o700
    assert server.user == "admin" and len(server.password) >= 32
    # the auth DB beside the tracking DB, in a folder only its owner can enter; none in the working dir
    assert os.path.exists(os.path.join(server.folder, "basic_auth.db"))
    assert os.path.exists(os.path.join(server.folder, "mlflow.db"))
    assert _mode(server.folder) == 0o700 and _mode(os.path.join(server.folder, "basic_auth.ini")) == 0o600
    assert not os.path.exists(os.path.join(server.home, "basic_auth.db"))
    assert not os.path.exists(os.path.join(ROOT, "basic_auth.db"))
    # the password is printed nowhere and stored nowhere but in the credentials file
    assert "authentication: on" in server.start_output
    assert server.password not in server.start_output
    assert _leaks([server.folder], server.secrets()) == []

    api = f"{server.uri}/api/2.0/mlflow"
    assert _http(f"{api}/experiments/search?max_results=1") == 401  # anonymous: refused
    assert _http(f"{api}/experiments/create", "POST", body={"name": "anon"}) == 401
    assert _http(f"{server.uri}/") == 401  # the UI too
    assert _http(f"{api}/experiments/search?max_results=1", auth=(server.user, "wrong-password")) == 401
    assert _http(f"{api}/experiments/search?max_results=1", auth=(server.user, server.password)) == 200
    assert _http(f"{server.uri}/health") == 200  # liveness stays open (it tells nothing)


def test_second_user_can_read_but_not_delete_the_experiment(server, as_admin, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    exp_id = MlflowClient(server.uri).create_experiment("shared")
    out = _script(server.env, "add-user", "bob")
    assert out.returncode == 0, out.stdout + out.stderr
    bob_file = os.path.join(server.folder, "users", "bob.credentials")
    assert _mode(bob_file) == 0o600
    bob, bob_pw = _read_credentials(bob_file)
    assert bob == "bob" and bob_pw not in out.stdout + out.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", bob)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", bob_pw)
    client = MlflowClient(server.uri)
    assert client.get_experiment(exp_id).name == "shared"  # read-only by default
    with pytest.raises(MlflowException) as e:
        client.delete_experiment(exp_id)
    assert e.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(MlflowException) as e:
        client.create_run(exp_id)
    assert e.value.error_code == "PERMISSION_DENIED"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", server.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.password)
    assert MlflowClient(server.uri).get_experiment(exp_id).lifecycle_stage == "active"


def test_wrong_or_missing_credentials_stop_before_any_work(server, tmp_path, monkeypatch):
    from drift import tracking

    # the sweep driver: a wrong password stops it before anything is written or submitted
    out = tmp_path / "runs"
    args = ["--grid", "smoke", "--executor", "local", "--out", str(out), "--tracking-uri", server.uri]
    wrong = server.client_env(MLFLOW_TRACKING_USERNAME=server.user, MLFLOW_TRACKING_PASSWORD="not-the-password")
    r = subprocess.run(SWEEP + args, cwd=ROOT, env=wrong, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "rejected the credentials of user 'admin'" in r.stderr and "MLFLOW_TRACKING_PASSWORD" in r.stderr, r.stderr
    assert "nothing was submitted" in r.stderr and not out.exists()

    # a run (what the sweep starts on a node): stops before training, at once, naming the variable
    over = {**_smoke_overrides(str(out)), "tracking_uri": server.uri}
    r = subprocess.run([sys.executable, "-m", "drift.launch", "--overrides", json.dumps(over)], cwd=ROOT, env=wrong,
                       capture_output=True, text=True, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 5 and "[launch] stopped before training" in text, text
    assert "rejected the credentials of user 'admin'" in text and "MLFLOW_TRACKING_PASSWORD" in text, text
    assert "retrying" not in text  # 401 is never retried
    assert not list(out.rglob("metrics.jsonl")) and not list(out.rglob("checkpoints")), list(out.rglob("*"))

    # no credential at all (no variables, no file): the run's tracker names both variables and the file
    empty_home = tmp_path / "nobody"
    empty_home.mkdir()
    monkeypatch.setenv("HOME", str(empty_home))
    for v in CRED_VARS:
        monkeypatch.delenv(v, raising=False)
    before = tracking.RETRIES["count"]
    with pytest.raises(tracking.TrackingAccessError) as e:
        tracking.Tracker(str(tmp_path / "run"), server.uri, "smoke", "r", {}, str(tmp_path / "art"))
    msg = str(e.value)
    assert "MLFLOW_TRACKING_USERNAME" in msg and "MLFLOW_TRACKING_PASSWORD" in msg
    assert os.path.join(str(empty_home), ".mlflow", "credentials") in msg, msg
    assert tracking.RETRIES["count"] == before and not (tmp_path / "run" / "metrics.jsonl").exists()

    # credentials inside a URI are refused before anything is written, and not repeated
    leaky = server.uri.replace("http://", f"http://{server.user}:{server.password}@")
    r = subprocess.run(SWEEP + ["--grid", "smoke", "--executor", "local", "--dry-run", "--tracking-uri", leaky], cwd=ROOT,
                       env=server.client_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "holds credentials" in r.stderr, r.stdout + r.stderr
    assert server.password not in r.stdout + r.stderr


def _smoke_overrides(out: str) -> dict:
    from experiments.grids import expand, load

    p = expand(load("smoke"), common={"experiment": "smoke", "out": out, "threads": 1})[0]
    return p.overrides


def _check_sweep_in_mlflow(server, out: str, experiment: str, n: int) -> None:
    """n FINISHED runs, each with every metrics.jsonl step, and no credential in a param or tag."""
    from mlflow.tracking import MlflowClient

    from drift.rundir import read_metrics

    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status)
                                                                             for r in runs]
    index = json.load(open(os.path.join(out, experiment, "sweep.json")))
    done = [p for p in index["points"] if p["status"] == "done"]
    assert len(done) == n
    by_id = {r.info.run_id: r for r in runs}
    for p in done:
        run_id = json.load(open(os.path.join(p["run_dir"], "DONE")))["mlflow_run_id"]
        steps = [row["step"] for row in read_metrics(p["run_dir"]) if "reward/mean" in row]
        assert sorted(m.step for m in client.get_metric_history(run_id, "reward/mean")) == steps
        data = by_id[run_id].data
        for k, v in {**data.params, **data.tags}.items():
            assert server.password not in v and server.password not in k, k


@pytest.mark.slow
def test_authenticated_sweep_logs_every_run_and_writes_no_credential(server, as_admin, tmp_path):
    out = tmp_path / "runs"
    # two of the smoke grid's points (the simplest method and the one with the most hooks), two at once: the
    # concurrency of the whole grid at half its cost (3 = --only left points unrun)
    args = ["--grid", "smoke", "--only", "0,3", "--executor", "local", "--parallel", "2", "--out", str(out),
            "--poll", "2", "--tracking-uri", server.uri]
    # as a user would run it: the credentials come from ~/.mlflow/credentials, read by every run
    r = subprocess.run(SWEEP + args, cwd=ROOT, env=server.client_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
    assert "done 2, skipped (already done) 0, failed 0" in r.stdout, r.stdout
    _check_sweep_in_mlflow(server, str(out), "smoke", 2)
    assert server.password not in r.stdout + r.stderr
    # every file: runs (config.json, metrics.jsonl, stdout.log, launch.jsonl, mlflow_run.json, checkpoints),
    # sweep.json, MLflow's artifact store and the server's folder (its log, DBs)
    assert os.path.exists(out / "smoke" / "sweep.json") and os.listdir(server.artifacts)
    assert _leaks([str(out), server.artifacts, server.folder], server.secrets()) == []


# ------------------------------------------------------------------------------------------------
def _cluster() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch is not on PATH (no Slurm here; .ci/slurm_up.sh brings up a local one)"
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in r.stdout.split()):
        return f"no usable Slurm cluster answers (sinfo: {(r.stdout + r.stderr).strip()[:200]})"
    return None


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_sweep_hands_no_password_to_slurm(server, as_admin, tmp_path):
    why = _cluster()
    if why:
        if os.environ.get("DRIFT_REQUIRE_SLURM") == "1":
            raise RuntimeError(f"DRIFT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    out = tmp_path / "runs"
    args = ["--grid", "smoke", "--experiment", "smoke_slurm", "--executor", "slurm", "--profile", "local_ci",
            "--only", "0", "--out", str(out), "--poll", "2", "--tracking-uri", server.uri]
    # the password also in the submitting shell's environment: the sweep must not pass it to sbatch
    # (Slurm keeps a batch job's environment in its state files); the job reads ~/.mlflow/credentials
    env = server.client_env(MLFLOW_TRACKING_USERNAME=server.user, MLFLOW_TRACKING_PASSWORD=server.password,
                            DRIFT_LAUNCH_HOLD="1:/smoke_slurm/")
    log = open(tmp_path / "sweep.log", "w")
    sweep = subprocess.Popen(SWEEP + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    state = re.search(r"StateSaveLocation\s*=\s*(\S+)", subprocess.run(["scontrol", "show", "config"],
                                                                       capture_output=True, text=True).stdout)
    try:
        held = lambda: list(out.rglob("HELD"))  # noqa: E731 -- the job runs, its Slurm state is on disk
        t = time.time()
        while not held():
            assert sweep.poll() is None, open(tmp_path / "sweep.log").read()
            assert time.time() - t < 600, "timed out waiting for the job to start"
            time.sleep(0.5)
        if state and os.access(state.group(1), os.R_OK):  # (readable here: CI runs as root)
            # Slurm keeps the job's environment there: it has the username, but not the password
            assert _leaks([state.group(1)], [f"MLFLOW_TRACKING_USERNAME={server.user}".encode()])
            assert _leaks([state.group(1)], server.secrets()) == []
        for h in held():
            open(os.path.join(h.parent, "RELEASE"), "w").close()
        assert sweep.wait(timeout=600) == 3, open(tmp_path / "sweep.log").read()  # 3: --only left 3 points
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert "done 1, skipped (already done) 0, failed 0" in open(tmp_path / "sweep.log").read()
    _check_sweep_in_mlflow(server, str(out), "smoke_slurm", 1)
    submitit_dir = out / "smoke_slurm" / ".submitit"
    assert list(submitit_dir.rglob("*.sh")) and list(submitit_dir.rglob("*.pkl"))  # sbatch script, pickles
    assert _leaks([str(out), str(tmp_path / "sweep.log")], server.secrets()) == []


# ------------------------------------------------------------------------------------------------
# No server needed
# ------------------------------------------------------------------------------------------------
def test_sweep_refuses_an_empty_uri_and_a_password_in_slurm_setup(tmp_path, monkeypatch, capsys):
    from experiments import sweep
    from experiments.grids import GridError

    # "$(slurm/mlflow_server.sh uri)" with no server running gives '': not a silent local store
    assert sweep.main(["--grid", "smoke", "--executor", "local", "--out", str(tmp_path), "--tracking-uri", ""]) == 2
    assert "--tracking-uri '': empty" in capsys.readouterr().err and not os.listdir(tmp_path)

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-value-for-the-test")
    prof = sweep.SlurmProfile(setup=["module load cuda", "export MLFLOW_TRACKING_PASSWORD=s3cret-value-for-the-test"])
    with pytest.raises(GridError, match="holds the MLflow password") as e:
        sweep.check_slurm_secrets(prof)
    assert "s3cret" not in str(e.value)
    sweep.check_slurm_secrets(sweep.SlurmProfile(setup=["module load cuda"]))  # no password: fine
    with sweep.slurm_job_env() as withheld:  # what sbatch (and the jobs) get: no password variable
        assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"
        assert list(withheld) == ["MLFLOW_TRACKING_PASSWORD"]
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cret-value-for-the-test"  # restored
