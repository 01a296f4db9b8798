"""A minimal system-container rootfs from Debian's busybox-static: no download, ~2 MB.

Its init is busybox init with an inittab that runs /etc/init.d/rcS, keeps a shell on the console
(askfirst, so nothing spins without a reader), and halts cleanly on SIGUSR2 (poweroff) or
SIGUSR1 (halt). Used by the demo, the tests and the benchmarks; LXC's busybox template makes the
same kind of container, which keeps the benchmarks fair.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

BUSYBOX = "/bin/busybox"
# busybox init powers off on SIGUSR2 (SIGTERM means reboot to it).
STOP_SIGNAL = int(signal.SIGUSR2)

INITTAB = """\
::sysinit:/etc/init.d/rcS
::askfirst:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/echo lxcone: shutting down
"""

RCS = """\
#!/bin/sh
# Bring up what the runtime configured: lo and any NIC already carry their addresses.
echo "lxcone busybox: $(hostname) up, pid $$"
"""


def applets(busybox: str = BUSYBOX) -> list[str]:
    """Every applet path busybox offers, e.g. 'bin/sh', 'sbin/init' (relative)."""
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def build_rootfs(dest: str | os.PathLike[str], busybox: str = BUSYBOX,
                 hostname: str = "lxcone") -> Path:
    """Create (or refresh) a busybox rootfs at ``dest`` and return its path.

    Raises FileNotFoundError if busybox-static is not installed (apt-get install busybox-static).
    """
    if not os.path.exists(busybox):
        raise FileNotFoundError(
            2, "busybox-static is not installed (apt-get install busybox-static)", busybox)
    root = Path(dest)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/init.d", "proc", "sys", "dev", "run",
              "tmp", "root", "var/log", "media", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(busybox, root / "bin/busybox")
    for rel in applets(busybox):
        link = root / rel
        if rel == "bin/busybox" or link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    files = {
        "etc/inittab": INITTAB,
        "etc/init.d/rcS": RCS,
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        "etc/hostname": hostname + "\n",
        "etc/hosts": "127.0.0.1 localhost\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    os.chmod(root / "etc/init.d/rcS", 0o755)
    return root
