"""Credentials for the authenticated MLflow server of ``slurm/mlflow_server.sh`` (stdlib only).

    mlflow_auth.py admin                   # the admin's username; creates the credentials on first use
    mlflow_auth.py exec DIR -- CMD ...     # exec CMD (mlflow server) with the auth settings in its environment
    mlflow_auth.py check URL               # anonymous refused (401), the admin's credentials accepted
    mlflow_auth.py rotate URL              # new random admin password: on the server, then in the file
    mlflow_auth.py add-user URL NAME FILE  # a new (read-only by default) user; its credentials in FILE (0600)

The admin's credentials live where every MLflow client looks for them: ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` if set, else MLflow's credentials file ``~/.mlflow/credentials``
(``[mlflow] mlflow_tracking_username / mlflow_tracking_password``). When neither holds any, ``admin``
creates a random password and writes the file (mode 0600, its folder 0700). Passwords are never
printed, never passed on a command line (``ps`` shows those to everyone) and never written to the
server's folder: the server gets the admin password only in its environment, and only for its first
start (when it creates the admin user in an empty auth database).

Exit status 0 on success, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import secrets
import stat
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from drift.tracking import CREDENTIAL_VARS, credentials_file, mlflow_credentials  # noqa: E402 (stdlib only)

USER_ENV, PASSWORD_ENV = CREDENTIAL_VARS
SECTION, USER_KEY, PASSWORD_KEY = "mlflow", USER_ENV.lower(), PASSWORD_ENV.lower()
ADMIN = "admin"


class AuthSetupError(RuntimeError):
    """A credential or server answer that stops the script (the message says what to do)."""


def new_password() -> str:
    """32 random URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def check_private(path: str) -> None:
    """AuthSetupError unless ``path`` belongs to this user and no one else may read or write it."""
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise AuthSetupError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): refusing to use it")
    if st.st_mode & 0o077:
        raise AuthSetupError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: others may read it; "
                             f"run `chmod 600 {path}` (and change the password: slurm/mlflow_server.sh rotate)")


def read_file(path: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    if os.path.exists(path):
        check_private(path)
        cp.read(path)
    return cp


def write_private(path: str, cp: configparser.ConfigParser) -> None:
    """Write ``cp`` to ``path`` atomically, mode 0600, in a folder of mode 0700 (created if missing)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            cp.write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def credentials_config(username: str, password: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp[SECTION] = {USER_KEY: username, PASSWORD_KEY: password}
    return cp


def resolve() -> tuple[str | None, str | None, str]:
    """(username, password, where) as MLflow's client resolves them (each variable before the file);
    the file must be private."""
    if os.path.exists(credentials_file()):
        check_private(credentials_file())
    return mlflow_credentials()


def admin() -> str:
    """The admin's username; writes new random credentials to ~/.mlflow/credentials if none exist."""
    user, pw, where = resolve()
    if user and pw:
        return user
    if user or pw:
        raise AuthSetupError(f"only half of the MLflow credentials is set ({where}): set both {USER_ENV} and "
                             f"{PASSWORD_ENV}, or both keys in {credentials_file()}")
    path = credentials_file()
    cp = read_file(path)
    if not cp.has_section(SECTION):
        cp.add_section(SECTION)
    cp[SECTION][USER_KEY], cp[SECTION][PASSWORD_KEY] = ADMIN, new_password()
    write_private(path, cp)
    print(f"[mlflow] created admin credentials (user '{ADMIN}', random password) in {path} (mode 0600)",
          file=sys.stderr)
    return ADMIN


PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def write_config(folder: str) -> str:
    """``<folder>/basic_auth.ini``: the auth database beside the tracking database, the admin's name
    (the one the auth database was created with), the permission a user has on experiments nobody
    granted them (DRIFT_MLFLOW_DEFAULT_PERMISSION, default READ). Returns its path."""
    path = os.path.join(folder, "basic_auth.ini")
    perm = os.environ.get("DRIFT_MLFLOW_DEFAULT_PERMISSION") or "READ"
    if perm not in PERMISSIONS:
        raise AuthSetupError(f"DRIFT_MLFLOW_DEFAULT_PERMISSION={perm!r}: must be one of {PERMISSIONS}")
    name = None
    if os.path.exists(os.path.join(folder, "basic_auth.db")) and os.path.exists(path):
        old = configparser.ConfigParser()
        old.read(path)
        name = old.get(SECTION, "admin_username", fallback=None)
    cp = configparser.ConfigParser()
    cp[SECTION] = {
        "default_permission": perm,
        "database_uri": "sqlite:///" + os.path.join(os.path.abspath(folder), "basic_auth.db"),
        "admin_username": name or resolve()[0] or ADMIN,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        # one worker: a password change through the API clears the cache at once (basic_auth.ini
        # in MLflow explains the staleness with several workers); saves a PBKDF2 hash per request
        "auth_cache_ttl_seconds": "60",
    }
    write_private(path, cp)
    return path


def exec_server(folder: str, cmd: list[str]) -> None:
    """Replace this process by ``cmd`` with the basic-auth settings in its environment: the config
    file, the Flask secret key (random, kept in ``<folder>/flask_secret``, 0600) and, only while the
    auth database does not exist yet, the admin password it is created with."""
    env = dict(os.environ)
    env["MLFLOW_AUTH_CONFIG_PATH"] = write_config(folder)
    key_path = os.path.join(folder, "flask_secret")
    if not os.path.exists(key_path):
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    check_private(key_path)
    with open(key_path) as f:
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = f.read().strip()
    if not os.path.exists(os.path.join(folder, "basic_auth.db")):
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = resolve()[1] or ""
    for k in (USER_ENV, PASSWORD_ENV, "MLFLOW_AUTH_ADMIN_USERNAME"):  # the ini names the admin
        env.pop(k, None)
    os.execvpe(cmd[0], cmd, env)


def _request(url: str, method: str = "GET", body: dict | None = None,
             auth: tuple[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def check(url: str) -> None:
    """The server refuses an anonymous request (401) and accepts the admin's credentials."""
    code, _ = _request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    if code != 401:
        raise AuthSetupError(f"{url} answered an anonymous request with HTTP {code}, not 401: it is not the "
                             "authenticated server this script starts")
    user, pw, where = resolve()
    code, text = _request(f"{url}/api/2.0/mlflow/users/get?username={user}", auth=(user or "", pw or ""))
    if code != 200:
        raise AuthSetupError(f"{url} refused the credentials of user {user!r} from {where} (HTTP {code}: "
                             f"{text.strip()[:120]}). The auth database was created with other credentials: "
                             f"put the right ones into {credentials_file()}, or remove the server's "
                             "basic_auth.db to start over (its users and permissions are lost)")


def rotate(url: str) -> None:
    """A new random password for the admin: changed on the server, then written to the file."""
    user, pw, where = resolve()
    path = credentials_file()
    if os.environ.get(PASSWORD_ENV):
        raise AuthSetupError(f"{PASSWORD_ENV} is set: unset it to rotate the password kept in {path} "
                             "(or change it by hand with the update-password API)")
    new = new_password()
    cp = read_file(path)
    cp[SECTION][PASSWORD_KEY] = new
    code, text = _request(f"{url}/api/2.0/mlflow/users/update-password", "PATCH",
                          {"username": user, "password": new, "current_password": pw}, auth=(user, pw))
    if code != 200:
        raise AuthSetupError(f"{url} refused to change the password of {user!r} (credentials from {where}): "
                             f"HTTP {code}: {text.strip()[:200]}; nothing was changed")
    write_private(path, cp)
    print(f"[mlflow] new password of '{user}' set on {url} and written to {path}", file=sys.stderr)


def add_user(url: str, name: str, out: str) -> None:
    """Create user ``name`` with a random password (its rights: the server's default permission, READ
    unless DRIFT_MLFLOW_DEFAULT_PERMISSION says otherwise); its credentials go to ``out`` (0600)."""
    if os.path.exists(out):
        raise AuthSetupError(f"{out} exists already: refusing to overwrite it")
    user, pw, where = resolve()
    new = new_password()
    code, text = _request(f"{url}/api/2.0/mlflow/users/create", "POST", {"username": name, "password": new},
                          auth=(user or "", pw or ""))
    if code != 200:
        raise AuthSetupError(f"{url} refused to create user {name!r} (as {user!r}, credentials from {where}): "
                             f"HTTP {code}: {text.strip()[:200]}")
    write_private(out, credentials_config(name, new))
    print(f"[mlflow] user '{name}' created; their credentials are in {out} (mode 0600): hand the file over "
          "privately; it goes to their ~/.mlflow/credentials (mode 0600)", file=sys.stderr)


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["admin"] and len(argv) == 1:
            print(admin())
        elif argv[:1] == ["exec"] and len(argv) > 3 and argv[2] == "--":
            exec_server(argv[1], argv[3:])
        elif argv[:1] == ["check"] and len(argv) == 2:
            check(argv[1])
        elif argv[:1] == ["rotate"] and len(argv) == 2:
            rotate(argv[1])
        elif argv[:1] == ["add-user"] and len(argv) == 4:
            add_user(argv[1], argv[2], argv[3])
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    except AuthSetupError as e:
        print(f"[mlflow] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
