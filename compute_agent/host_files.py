"""Modes and group of the files the agent leaves on a compute host.

Instance directories, the image cache and the probe's scratch directories are 0750; disks,
overlays, seed ISOs (which hold user_data) and console logs are 0640. Their group is QEMU's
(the primary group of the user libvirt runs guests as: ``libvirt-qemu`` on Debian, ``qemu``
elsewhere), so QEMU can still traverse the directories and read the files while other local
users can read neither. Where no such user exists (a host without libvirtd, tests on the
libvirt test driver), the files keep the agent's own group.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
from pathlib import Path

DIR_MODE = 0o750
FILE_MODE = 0o640
# The users libvirt's QEMU driver runs guests as, in the order distributions use them.
QEMU_USERS = ("libvirt-qemu", "qemu")


@functools.cache
def qemu_gid() -> int | None:
    """The gid QEMU's processes run with here, or None when no QEMU user exists.

    ``MINICLOUD_AGENT_QEMU_GROUP`` (a group name) overrides the lookup.

    Raises:
        KeyError: the overriding group does not exist.
    """
    override = os.environ.get("MINICLOUD_AGENT_QEMU_GROUP")
    if override:
        return grp.getgrnam(override).gr_gid
    for user in QEMU_USERS:
        try:
            return pwd.getpwnam(user).pw_gid
        except KeyError:
            continue
    return None


def _share(path: Path, mode: int) -> None:
    gid = qemu_gid()
    if gid is not None and os.stat(path).st_gid != gid:
        os.chown(path, -1, gid)
    os.chmod(path, mode)


def share_dir(path: Path) -> None:
    """Make ``path`` 0750 with QEMU's group.

    Raises:
        OSError: the directory is missing, or the agent may not give it that group.
    """
    _share(Path(path), DIR_MODE)


def share_file(path: Path) -> None:
    """Make ``path`` 0640 with QEMU's group.

    Raises:
        OSError: the file is missing, or the agent may not give it that group.
    """
    _share(Path(path), FILE_MODE)
