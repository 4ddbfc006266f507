"""Real servers for the backend tests: versitygw and moto_server (S3 API), sshd, smbd.

Each starter runs a private instance on a free loopback port with its own
config under a temp dir, waits on a readiness condition with a deadline (no
sleeps as synchronisation), and can stop and restart on the same port so a
test can take a server away mid-transfer.
"""

from tests.servers.common import ServerError, free_port, wait_until
from tests.servers.moto import MotoServer
from tests.servers.smbd import SambaServer
from tests.servers.sshd import SSHServer
from tests.servers.versitygw import VersityServer

TEST_USER = "ferrytest"

__all__ = [
    "TEST_USER",
    "MotoServer",
    "SSHServer",
    "SambaServer",
    "ServerError",
    "VersityServer",
    "free_port",
    "wait_until",
]
