"""What a command checks before it starts anything: a user's mistake found here is one line
(:class:`UserError`), not a crash inside faust's worker minutes later with a page of traceback.

>>> check_port_free("127.0.0.1", 0, "--metrics-port")  # port 0: the system picks one, always free
>>> check_export_dir("")  # no export: nothing to check
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from pathlib import Path

from streamrec.streams.config import Settings

log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem the user can fix (the message says how): one line, exit status 1."""


def locked_by(path: str | Path) -> int | None:
    """Whether another process holds the DuckDB file ``path`` (DuckDB lets one process open it):
    that process's pid (0 if DuckDB does not say it), or None when this process can open the file.
    Other errors (e.g. not a database) are raised."""
    import duckdb

    try:
        duckdb.connect(str(path)).close()
    except duckdb.IOException as e:
        if "lock" not in str(e):
            raise
        pid = re.search(r"PID (\d+)", str(e))
        return int(pid.group(1)) if pid else 0
    return None


def check_db_free(path: str) -> None:
    """Fail now, before joining the consumer group, if another process holds the DuckDB file."""
    import duckdb

    if Path(path).is_dir():
        raise UserError(f"--db {path} is a directory: give the worker's DuckDB file (created if missing)")
    if not Path(path).parent.is_dir():
        raise UserError(f"--db {path}: the folder {Path(path).parent} does not exist: create it, or give another path")
    try:
        pid = locked_by(path)
    except duckdb.IOException as e:
        raise UserError(f"cannot open DuckDB file {path}: {str(e).splitlines()[0]}") from e
    if pid is not None:
        raise UserError(f"DuckDB file {path} is locked by {f'process {pid}' if pid else 'another process'}: stop it, "
                        "or give this worker its own file with --db")


def check_port_free(host: str, port: int, option: str) -> None:
    """The web server can bind ``host:port``: else why not (in use, an unknown host, not this machine's)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--metrics-host {host!r}: no such host ({e.strerror}): give an address of this machine "
                        "(e.g. 127.0.0.1, or 0.0.0.0 for every interface)") from e
    family, _, _, _, address = addresses[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the web server will
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use ({e.strerror}): give another with {option}") from e
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): give another address with "
                            f"--metrics-host or port with {option}") from e


def check_checkpoint(directory: str, option: str) -> None:
    """``directory`` holds a checkpoint whose card reads (the weights are read when the worker loads it)."""
    from streamrec.model.checkpoint import read_card
    from streamrec.model.registry import RegistryError

    try:
        read_card(directory)
    except (FileNotFoundError, RegistryError) as e:  # (RegistryError: CorruptCheckpointError's base)
        raise UserError(f"{e} ({option})") from e


def check_registry(root: str) -> None:
    """A registry the worker can serve from: a directory (it may be new), its champion's card readable."""
    from streamrec.model.registry import Registry, RegistryError

    try:  # (Registry itself refuses a file)
        reg = Registry(root)
        champion = reg.champion()
    except (RegistryError, OSError, ValueError) as e:
        raise UserError(f"--registry {root}: {e}") from e
    if champion is None:  # (a new deployment: the retraining job promotes a first model later)
        log.warning("registry %s has no champion yet: serving the baseline until one is promoted", root)
    else:
        check_checkpoint(str(reg.path(champion)), f"--registry's champion {champion}; `streamrec rollback` "
                                                  "reinstates the previous one")


def check_export_dir(path: str) -> None:
    """``--export-dir``: a directory this process can write (created if missing)."""
    if not path:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"--export-dir {path} is a file: give a directory for the Parquet exports")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--export-dir {path}: cannot create it ({e.strerror})") from e
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"--export-dir {path}: not writable by this user")


def check_worker(settings: Settings) -> Settings:
    """Everything a worker needs that the user gave, checked before it starts; ``--metrics-port 0``
    becomes a free port (returned settings)."""
    import dataclasses

    from streamrec.streams.broker import free_port

    if settings.checkpoint:
        check_checkpoint(settings.checkpoint, "--checkpoint or STREAMREC_CHECKPOINT")
    if settings.registry:
        check_registry(settings.registry)
    check_export_dir(settings.export_dir)
    check_db_free(settings.db)
    check_port_free(settings.metrics_host, settings.metrics_port, "--metrics-port (STREAMREC_METRICS_PORT)")
    if settings.metrics_port == 0:  # (the host was checked above: port 0 is always free)
        settings = dataclasses.replace(settings, metrics_port=free_port(settings.metrics_host))
    return settings
