"""An OpenSSH server for the tests, on 127.0.0.1 only, with its own host key, client key and
configuration in a temporary directory; parity reaches it through ``PARITY_SSH``.

Needs Debian's openssh-server and openssh-client (``.ci/run`` installs them on CI; elsewhere a
test that needs them is skipped with the reason). Run as root, it logs in as root with the
test's key; otherwise as the current user.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Sshd:
    port: int
    user: str
    client: str  # the ssh command parity is given as PARITY_SSH

    def url(self, python: str | None = None) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}" + (f"?python={python}" if python else "")


def missing_tools() -> str | None:
    for tool in ("sshd", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (apt-get install openssh-server openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(directory: Path):
    """Start sshd on 127.0.0.1; return (Sshd, process). The caller terminates the process."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True)
    shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
    os.chmod(directory / "authorized_keys", 0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",  # never any other address
        f"HostKey {directory / 'host_key'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        f"PidFile {directory / 'sshd.pid'}",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "PrintMotd no",
        "",
    ]))
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(directory / "sshd.log", "wb"))
    client = (f"ssh -i {directory / 'client_key'} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
              f"-o UserKnownHostsFile={directory / 'known_hosts'} -o LogLevel=ERROR")
    user = getpass.getuser()
    deadline = time.monotonic() + 20
    while True:  # ready once a login works
        probe = subprocess.run([*client.split(), "-p", str(port), "-o", "BatchMode=yes", f"{user}@127.0.0.1", "true"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sshd did not come up: {(directory / 'sshd.log').read_text()[-500:]} "
                               f"{probe.stderr.decode(errors='replace')[-300:]}")
        time.sleep(0.2)
    return Sshd(port, user, client), proc
