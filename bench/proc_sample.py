"""What the soak samples of a process from /proc: resident memory, open descriptors, its
TCP sockets by state and peer port, CPU seconds. Linux only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ESTABLISHED, CLOSE_WAIT = "01", "08"  # /proc/net/tcp states


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def socket_inodes(pid: int) -> tuple[int, set[int]]:
    """The process's open descriptors: how many, and the inodes of its sockets."""
    fd_dir = Path(f"/proc/{pid}/fd")
    count, inodes = 0, set()
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / name)
        except FileNotFoundError:  # closed since listed
            continue
        count += 1
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return count, inodes


def tcp_table() -> dict[int, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for every TCP socket, IPv4 and IPv6."""
    table = {}
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            local, remote = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
            table[int(f[9])] = (local, remote, f[3])
    return table


def sample(gateway: int, backend: int, gw_port: int, up_port: int) -> dict[str, Any]:
    fds, inodes = socket_inodes(gateway)
    socks = [s for i, s in tcp_table().items() if i in inodes]
    be_fds, _ = socket_inodes(backend)
    return {
        "gateway": {
            "rss_mb": rss_kb(gateway) / 1024,
            "fds": fds,
            "upstream_conns": sum(r == up_port and st == ESTABLISHED for _, r, st in socks),
            "client_conns": sum(lp == gw_port and st == ESTABLISHED for lp, _, st in socks),
            "close_wait": sum(st == CLOSE_WAIT for _, _, st in socks),
            "close_wait_upstream": sum(r == up_port and st == CLOSE_WAIT for _, r, st in socks),
            "cpu_s": cpu_s(gateway),
        },
        "backend": {"rss_mb": rss_kb(backend) / 1024, "fds": be_fds, "cpu_s": cpu_s(backend)},
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
