"""A private Samba smbd: own config, a writable share, and the test user with a password."""

from __future__ import annotations

import os
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

SHARE = "ferry"


class SambaServer(ServerProcess):
    """smbd --foreground on host:port (127.0.0.1 unless told) serving `root` as share `ferry`."""

    user = USER
    password = PASSWORD
    share = SHARE

    def __init__(self, port: int | None = None, audit: bool = False, host: str = LOOPBACK) -> None:
        """With `audit`, the share logs (full_audit) every open, close, fsync and rename to
        `log`. `host`: the address to listen on (pods on real nodes reach the host at another)."""
        self.host = host
        self.port = port or free_port(host)
        self.audit = audit
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-smbd-"))
        os.chmod(self.dir, 0o755)
        self.root = self.dir / "share"
        self.config = self.dir / "smb.conf"
        self.password_file = self.dir / "password"
        self.log = self.dir / "smbd.log"
        self.proc: subprocess.Popen | None = None
        self._configured = False

    def _configure(self) -> None:
        if self.audit:
            self._check_module(need("smbd"), "vfs/full_audit.so")
        pw = ensure_user()
        self.root.mkdir(exist_ok=True)
        os.chown(self.root, pw.pw_uid, pw.pw_gid)
        dirs = {k: self.dir / k for k in ("private", "lock", "state", "cache", "pid", "ncalrpc")}
        for d in dirs.values():
            d.mkdir(exist_ok=True)
        self.config.write_text(
            "\n".join(
                [
                    "[global]",
                    f"smb ports = {self.port}",
                    f"interfaces = {'lo' if self.host == LOOPBACK else self.host + '/32'}",
                    "bind interfaces only = yes",
                    f"private dir = {dirs['private']}",
                    f"lock directory = {dirs['lock']}",
                    f"state directory = {dirs['state']}",
                    f"cache directory = {dirs['cache']}",
                    f"pid directory = {dirs['pid']}",
                    f"ncalrpc dir = {dirs['ncalrpc']}",
                    "disable netbios = yes",
                    "load printers = no",
                    "printing = bsd",
                    "printcap name = /dev/null",
                    "rpc start on demand helpers = no",
                    "server min protocol = SMB2_02",
                    "server signing = auto",
                    "smb encrypt = if_required",
                    "passdb backend = tdbsam",
                    "map to guest = never",
                    "log level = 1",
                    "",
                    f"[{SHARE}]",
                    f"path = {self.root}",
                    "read only = no",
                    f"valid users = {self.user}",
                    "create mask = 0644",
                    *(
                        [
                            "vfs objects = full_audit",
                            "full_audit:syslog = no",
                            "full_audit:prefix = audit",
                            "full_audit:success = openat close fsync fsync_send renameat",
                            "full_audit:failure = none",
                        ]
                        if self.audit
                        else []
                    ),
                    "",
                ]
            )
        )
        smbpasswd = need("smbpasswd")
        subprocess.run(
            [smbpasswd, "-c", str(self.config), "-a", "-s", self.user],
            input=f"{self.password}\n{self.password}\n",
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.password_file.write_text(self.password + "\n")
        os.chmod(self.password_file, 0o600)
        self._configured = True

    def start(self, timeout: float = 30.0) -> SambaServer:
        if not self._configured:
            self._configure()
        smbd = need("smbd")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    smbd,
                    "--foreground",
                    "--no-process-group",
                    "--debug-stdout",
                    f"--configfile={self.config}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: port_open(self.port, self.host), timeout, f"smbd on {self.port}", self.proc
        )
        return self

    @staticmethod
    def _check_module(smbd: str, module: str) -> None:
        """smbd serves a share whose VFS module is missing as a share with no files at all:
        say what is missing instead."""
        info = subprocess.run([smbd, "-b"], capture_output=True, text=True).stdout
        dirs = [
            line.split(":", 1)[1].strip() for line in info.splitlines() if "MODULESDIR:" in line
        ]
        if not any((Path(d) / module).is_file() for d in dirs):
            raise ServerError(
                f"smbd has no {module} (Debian: samba-vfs-modules; tests/servers/install.sh)"
            )

    def uri(self, sub: str, **opts: str) -> str:
        q = {"password_file": str(self.password_file), **opts}
        query = "&".join(f"{k}={v}" for k, v in q.items())
        return f"smb://{self.user}@{self.host}:{self.port}/{SHARE}/{sub.lstrip('/')}?{query}"
