"""A real, throw-away PostgreSQL server for the tests of ``astroflax tune --storage postgresql://``.

``postgres_server()`` finds the server binaries (``initdb``, ``pg_ctl``, ``postgres`` from one
directory: ``pg_ctl``'s on PATH, else the newest ``/usr/lib/postgresql/*/bin``), makes a
temporary directory, ``initdb``s a cluster there with trust authentication, starts it on a free
127.0.0.1 port (its unix socket inside the directory, so it never touches /var/run/postgresql),
creates a database and yields a ``PostgresServer``; on exit ``pg_ctl stop -m fast`` and the
directory is removed.

postgres refuses to run as root, and CI runs the tests as root: then the cluster belongs to an
unprivileged system user (``postgres``, which Debian's package creates, else ``nobody``, else a
``useradd --system`` user ``astroflax-pg``) and every server command runs through ``runuser``
(or ``setpriv``). Not as root, the server runs as the current user. The database role is named
after that user, so the URL is ``postgresql://USER@127.0.0.1:PORT/DBNAME``.

Missing binaries raise ``PostgresUnavailable`` (the tests fail on it, they do not skip:
scripts/test.sh installs Debian's ``postgresql``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
FALLBACK_USERS = ("postgres", "nobody")
CREATED_USER = "astroflax-pg"
DBNAME = "astroflax_test"
INSTALL_HINT = ("install Debian's postgresql package (scripts/test.sh does: apt-get install postgresql), "
                "or put initdb, pg_ctl and postgres on PATH")


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here (no binaries, or it would not start)."""


@dataclasses.dataclass
class PostgresServer:
    user: str  # the database role (and the OS user the server runs as)
    port: int
    dbname: str
    root: Path  # the temporary directory: data/, sock/, server.log

    def url(self, password: str | None = None, dbname: str | None = None) -> str:
        """``postgresql://USER[:PASSWORD]@127.0.0.1:PORT/DBNAME`` (trust auth ignores a password)."""
        auth = f"{self.user}:{password}" if password else self.user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname or self.dbname}"

    @property
    def sqlalchemy_url(self) -> str:
        """The same URL for SQLAlchemy with psycopg 3 (what astroflax rewrites ``postgresql://`` to)."""
        return "postgresql+psycopg://" + self.url().split("://", 1)[1]

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.root / "server.log", lines)


# ------------------------------------------------------------------ binaries, user


def _version_key(bin_dir: str) -> tuple[int, ...]:
    version = Path(bin_dir).parent.name  # /usr/lib/postgresql/<version>/bin
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


def find_server_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres of one PostgreSQL version."""
    candidates: list[str] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:  # /usr/local/bin/pg_ctl may be a symlink into /usr/lib/postgresql/<v>/bin
        candidates += [os.path.dirname(os.path.realpath(pg_ctl)), os.path.dirname(pg_ctl)]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in SERVER_BINARIES):
            return Path(d)
    found = {b: shutil.which(b) for b in SERVER_BINARIES}
    raise PostgresUnavailable(
        "the PostgreSQL tests need a real server, but neither PATH nor /usr/lib/postgresql/*/bin has "
        f"{', '.join(SERVER_BINARIES)} together (on PATH: "
        + ", ".join(f"{b}={p or 'missing'}" for b, p in found.items()) + f"); {INSTALL_HINT}")


def server_user() -> pwd.struct_passwd:
    """The OS user the server runs as: the current one, or an unprivileged one when root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in (*FALLBACK_USERS, CREATED_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    useradd = shutil.which("useradd")
    if not useradd:
        raise PostgresUnavailable(f"running as root, postgres needs an unprivileged user: none of "
                                  f"{', '.join(FALLBACK_USERS)} exists and useradd is missing")
    subprocess.run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", CREATED_USER], check=True, capture_output=True)
    return pwd.getpwnam(CREATED_USER)


def _as_user(user: pwd.struct_passwd, argv: list[str]) -> list[str]:
    if user.pw_uid == os.geteuid():
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--", *argv]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *argv]
    raise PostgresUnavailable("running as root, but neither runuser nor setpriv is there to start postgres as "
                              f"the unprivileged user {user.pw_name}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


# ------------------------------------------------------------------------ server


@contextlib.contextmanager
def postgres_server(dbname: str = DBNAME, start_attempts: int = 3) -> Iterator[PostgresServer]:
    bin_dir = find_server_bin_dir()
    user = server_user()
    parent = "/tmp" if os.path.isdir("/tmp") else None  # short (unix socket paths) and traversable by the user
    root = Path(tempfile.mkdtemp(prefix="astroflax-pg-", dir=parent))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    for p in (root, sock):
        os.chown(p, user.pw_uid, user.pw_gid)
    os.chmod(root, 0o700)
    # A clean environment: no PGDATA/PGPORT/PGHOST of the caller's, a locale that always exists.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C", "TZ": "UTC",
           "HOME": str(root)}

    def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(_as_user(user, argv), check=False, cwd=root, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    started = False
    try:
        init = run([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", user.pw_name, "-E", "UTF8",
                    "--no-locale", "--no-sync"])
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb as user {user.pw_name} failed ({init.returncode}):\n"
                                      f"{init.stdout}\n{init.stderr}")
        for attempt in range(start_attempts):  # another process may take the free port before postgres does
            port = free_port()
            options = (f"-p {port} -k {shlex.quote(str(sock))} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
            start = run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                         "-w", "-t", "60", "start"])
            if start.returncode == 0:
                started = True
                break
            if "already in use" not in _tail(log, 50) or attempt == start_attempts - 1:
                raise PostgresUnavailable(f"pg_ctl start as user {user.pw_name} failed ({start.returncode}):\n"
                                          f"{start.stdout}\n{start.stderr}\nserver log:\n{_tail(log, 30)}")
        server = PostgresServer(user=user.pw_name, port=port, dbname=dbname, root=root)
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=user.pw_name, dbname="postgres",
                             autocommit=True, connect_timeout=30) as con:
            con.execute(f'CREATE DATABASE "{dbname}"')
        yield server
    finally:
        if started:
            stop = run([str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "fast", "-w", "-t", "60"])
            if stop.returncode != 0:
                _kill_postmaster(data)
        shutil.rmtree(root, ignore_errors=True)


def _kill_postmaster(data: Path) -> None:
    """The last resort when ``pg_ctl stop`` failed: the postmaster's pid is line 1 of postmaster.pid."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; its children exit with it
        for _ in range(50):
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)
