"""Which CPUs the benchmark gives the measured server and which its load clients (`--server-cores`, `--client-cores`).

The server gets the first N usable CPUs, the clients the last M (by default the CPUs the server does not get, or all
of them when it gets every one). Where the two sets overlap the clients share the server's cores, and the figures
then count the server's CPU while the clients compete for it: the benchmark says so in its output.
"""
from __future__ import annotations


class CoreError(ValueError):
    """A core count this machine cannot give."""


def choose(server_cores: int, client_cores: int | None, usable: list[int]) -> tuple[list[int], list[int]]:
    """(server CPUs, client CPUs) out of `usable` (sorted CPU ids this process may run on)."""
    if not 1 <= server_cores <= len(usable):
        raise CoreError(f"--server-cores {server_cores}: this machine lets us use {len(usable)} CPU(s) "
                        f"({format_cpus(usable)})")
    if client_cores is not None and not 1 <= client_cores <= len(usable):
        raise CoreError(f"--client-cores {client_cores}: this machine lets us use {len(usable)} CPU(s) "
                        f"({format_cpus(usable)})")
    server = usable[:server_cores]
    if client_cores is None:
        client = usable[server_cores:] or usable
    else:
        client = usable[-client_cores:]
    return server, client


def shared(server: list[int], client: list[int]) -> list[int]:
    """The CPUs both run on."""
    return sorted(set(server) & set(client))


def format_cpus(cpus: list[int]) -> str:
    """"CPU 0" or "CPUs 0,1"."""
    return f"CPU{'s' if len(cpus) > 1 else ''} {','.join(map(str, cpus))}"
