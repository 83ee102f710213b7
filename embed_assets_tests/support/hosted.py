"""A Supabase-shaped Postgres built from real parts, for the hosted-database tests.

- One database of its own on the embedded server, pgvector installed by the superuser in schema
  `extensions` (where Supabase puts it), the application's own tables already in `public` under names the
  project also uses (`recordings`, `transcript_chunks`, `chunks`).
- Roles: an owner without superuser rights (Supabase's `postgres` role is not a superuser either), a worker
  role with no DDL rights, and `anon` / `authenticated` with Supabase's default privileges in `public`
  (everything new there is granted to them; here also globally, a harsher setting than Supabase's).
- PgBouncer 1.18 from Debian's packages in transaction mode in front of it (as Supabase's pooler on port
  6543), password-checked, run as the embedded server's socket owner (`pgserver`). Optional client TLS with
  a certificate authority made here with openssl, for `sslmode=verify-full`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg

from embed_assets_tests.support.dagster_dev import drop_database, free_port, fresh_database

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
OWNER, WORKER, APP = "supa_owner", "supa_worker", "supa_app"
PASSWORDS = {OWNER: "owner-pw-7Hq2", WORKER: "worker-pw-9Kx4", APP: "app-pw-3Zm8"}
APP_TABLES = {
    "recordings": "CREATE TABLE public.recordings (id bigint PRIMARY KEY, title text)",
    "transcript_chunks": "CREATE TABLE public.transcript_chunks (id bigint PRIMARY KEY, content text, embedding text)",
    "chunks": "CREATE TABLE public.chunks (id bigint PRIMARY KEY, body text)",
}


def pgbouncer_missing() -> str | None:
    """Why the pooler tests cannot run here, or None."""
    if not Path(PGBOUNCER).exists():
        return "pgbouncer is not installed (make test installs Debian's package as root)"
    if os.geteuid() != 0 or not shutil.which("runuser"):
        return "pgbouncer must run as the embedded server's socket owner (pgserver): needs root and runuser"
    return None


@dataclass
class Hosted:
    superuser_url: str  # the embedded server, this database, as superuser (the test's admin)
    database: str
    socket_dir: str
    pooler_port: int
    tls_dir: Path | None = None

    def direct_url(self, role: str = OWNER) -> str:
        return f"postgresql://{role}:{PASSWORDS[role]}@/{self.database}?host={self.socket_dir}"

    def pooler_url(self, role: str = OWNER, password: str | None = None, tls: str | None = None) -> str:
        url = f"postgresql://{role}:{password or PASSWORDS[role]}@127.0.0.1:{self.pooler_port}/{self.database}"
        if tls:
            url += f"?sslmode={tls}" + (f"&sslrootcert={self.tls_dir / 'ca.crt'}" if self.tls_dir else "")
        return url

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.superuser_url, autocommit=True)


def _ensure_role(c: psycopg.Connection, role: str, login: bool) -> None:
    if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        c.execute(f"CREATE ROLE {role} {'LOGIN' if login else 'NOLOGIN'} NOSUPERUSER NOCREATEDB NOCREATEROLE")
    if login:
        c.execute(f"ALTER ROLE {role} PASSWORD '{PASSWORDS[role]}'")


def _make_tls(d: Path) -> None:
    """A certificate authority and a server certificate for 127.0.0.1 signed by it."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=embed-assets test CA",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
        "-out", "server.csr")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName = IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "ext.cnf", "-out", "server.crt")  # fmt: skip


@contextmanager
def hosted_database(server_url: str, work: Path, tls: bool = False) -> Iterator[Hosted]:
    """Build the database, its roles and a transaction-mode PgBouncer in front of it; tear all down after."""
    name = f"supa_{os.getpid()}"
    url = fresh_database(server_url, name)
    socket_dir = parse_qs(urlsplit(url).query)["host"][0]
    with psycopg.connect(url, autocommit=True) as c:
        for role in (OWNER, WORKER, APP):
            _ensure_role(c, role, login=True)
        for role in ("anon", "authenticated"):
            _ensure_role(c, role, login=False)
        c.execute("CREATE SCHEMA extensions")
        c.execute("CREATE EXTENSION vector WITH SCHEMA extensions")
        c.execute(f"GRANT CREATE, CONNECT, TEMPORARY ON DATABASE {name} TO {OWNER}")
        c.execute(f"GRANT CONNECT ON DATABASE {name} TO {WORKER}, {APP}")
        c.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {OWNER}")
        c.execute("GRANT USAGE ON SCHEMA public, extensions TO anon, authenticated")
        c.execute(f"GRANT USAGE ON SCHEMA extensions TO {OWNER}, {WORKER}, {APP}")  # Supabase: every API role
        for scope in ("IN SCHEMA public", ""):
            for kind in ("TABLES", "FUNCTIONS", "SEQUENCES"):
                c.execute(
                    f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} {scope} GRANT ALL ON {kind} TO anon, authenticated"
                )
        c.execute(f"SET ROLE {OWNER}")
        for ddl in APP_TABLES.values():
            c.execute(ddl)
        c.execute("INSERT INTO public.recordings VALUES (1, 'an application row'), (2, 'another')")
        c.execute("INSERT INTO public.transcript_chunks VALUES (1, 'old system chunk', '[0.1,0.2]')")
        c.execute("INSERT INTO public.chunks VALUES (1, 'app chunk')")
        c.execute("RESET ROLE")
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o777)
    tls_dir = None
    if tls:
        tls_dir = work / "tls"
        tls_dir.mkdir(exist_ok=True)
        _make_tls(tls_dir)
        for f in tls_dir.iterdir():
            os.chmod(f, 0o644)
    port = free_port()
    (work / "userlist.txt").write_text("".join(f'"{r}" "{p}"\n' for r, p in PASSWORDS.items()))
    tls_conf = (
        f"client_tls_sslmode = allow\nclient_tls_key_file = {tls_dir / 'server.key'}\n"
        f"client_tls_cert_file = {tls_dir / 'server.crt'}\n"
        if tls_dir
        else ""
    )
    (work / "pgbouncer.ini").write_text(
        f"""[databases]
{name} = host={socket_dir} dbname={name}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {work / "userlist.txt"}
pool_mode = transaction
default_pool_size = 20
max_client_conn = 500
logfile = {work / "pgbouncer.log"}
pidfile = {work / "pgbouncer.pid"}
{tls_conf}"""
    )
    for f in ("userlist.txt", "pgbouncer.ini"):
        os.chmod(work / f, 0o644)
    proc = subprocess.Popen(
        ["runuser", "-u", "pgserver", "--", PGBOUNCER, str(work / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (work / "pgbouncer.log").read_text() if (work / "pgbouncer.log").exists() else ""
                    raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}") from None
                time.sleep(0.1)
        yield Hosted(url, name, socket_dir, port, tls_dir)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        drop_database(server_url, name)
