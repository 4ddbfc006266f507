"""A private OpenSSH sshd: own config, host key, and a test user with a key and a password."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers.common import (
    LOOPBACK,
    PASSWORD,
    USER,
    ServerError,
    ServerProcess,
    ensure_user,
    free_port,
    need,
    port_open,
    wait_until,
)

SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",  # Debian, Ubuntu
    "/usr/libexec/openssh/sftp-server",  # Fedora, RHEL
    "/usr/lib/ssh/sftp-server",  # Arch
)


class SSHServer(ServerProcess):
    """sshd -D on host:port (127.0.0.1 unless told). `root`: a directory the test user owns."""

    user = USER
    password = PASSWORD

    def __init__(
        self,
        port: int | None = None,
        sftp_options: str = "",
        sftp_log: bool = False,
        host: str = LOOPBACK,
    ) -> None:
        """`sftp_options` go to the SFTP server, e.g. `-P posix-rename` to deny a request.
        With `sftp_log`, the server is OpenSSH's sftp-server program instead of sshd's
        internal one, and logs each request it serves (open, write, fsync, rename...) to
        `sftp_log_file`."""
        self.host = host
        self.port = port or free_port(host)
        self.sftp_options = sftp_options
        self.sftp_log = sftp_log
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-sshd-"))
        os.chmod(self.dir, 0o755)
        self.proc: subprocess.Popen | None = None
        self.root = self.dir / "data"
        self.host_key = self.dir / "host_ed25519"
        self.user_key = self.dir / "user_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.password_file = self.dir / "password"
        self.config = self.dir / "sshd_config"
        self.log = self.dir / "sshd.log"
        self.sftp_log_file = self.dir / "sftp.log"
        self._configured = False

    def _configure(self) -> None:
        pw = ensure_user()
        keygen = need("ssh-keygen")
        for key in (self.host_key, self.user_key):
            if not key.exists():
                subprocess.run(
                    [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
                )
        auth = self.dir / "authorized_keys"
        shutil.copy(f"{self.user_key}.pub", auth)
        os.chmod(auth, 0o644)
        self.root.mkdir(exist_ok=True)
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.password_file.write_text(self.password + "\n")
        os.chmod(self.password_file, 0o600)
        subsystem = f"internal-sftp {self.sftp_options}"
        if self.sftp_log:
            program = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), None)
            if program is None:
                raise ServerError(f"no sftp-server program in {', '.join(SFTP_SERVERS)}")
            self.sftp_log_file.touch()
            os.chown(self.sftp_log_file, pw.pw_uid, pw.pw_gid)
            # sshd runs it through the user's shell, which appends its stderr to the log.
            subsystem = f"{program} -e -l VERBOSE {self.sftp_options} 2>>{self.sftp_log_file}"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {auth}",
                    "UsePAM no",
                    "StrictModes no",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin no",
                    f"AllowUsers {self.user}",
                    f"Subsystem sftp {subsystem}".rstrip(),
                    "MaxSessions 64",
                    "MaxStartups 64:30:128",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        self._configured = True

    def start(self, timeout: float = 30.0) -> SSHServer:
        if not self._configured:
            self._configure()
        sshd = need("sshd")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: port_open(self.port, self.host), timeout, f"sshd on {self.port}", self.proc
        )
        return self

    def uri(self, sub: str, **opts: str) -> str:
        """An sftp:// URI for an absolute path below `root`, with key auth and strict host keys."""
        q = {"key_file": str(self.user_key), "known_hosts": str(self.known_hosts), **opts}
        query = "&".join(f"{k}={v}" for k, v in q.items())
        return f"sftp://{self.user}@{self.host}:{self.port}{self.root}/{sub.lstrip('/')}?{query}"

    def check(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError("sshd is not running")
