"""A model registry on disk: numbered versions, their status, and the champion.

Layout of ``root``::

    index.json          every version's metadata and status, the champion and its history
    v1/                 checkpoint of version 1: model.safetensors + card.json
    v2/ ...

``index.json`` is the only mutable file. It is rewritten whole, to a temporary file then renamed
(``os.replace``), so a crash leaves the old index or the new one, never half of one; read-modify-
write cycles hold an exclusive ``flock`` on ``.lock`` so a retraining job and a hand-run
``streamrec promote`` cannot lose each other's update. Version directories are written under a
temporary name and renamed into place before the index mentions them, and never change after.

Statuses: ``candidate`` (registered, not yet judged), ``champion`` (exactly one at a time, the
version workers serve), ``retired`` (a former champion), ``rejected`` (failed the offline gate or
verification; the reason is kept). ``promote`` pushes the new champion on a history stack;
``rollback`` pops it (it becomes ``retired``) and reinstates the previous champion.

The checkpoint's card gets ``version`` = the registry version (``"v3"``), so a
``TransformerRecommender`` loaded from ``path(v)`` reports ``"v3"`` in its lists, and the card
keeps ``parent``, ``cutoff_time``, ``metrics`` and ``training_seconds``. ``verify`` re-reads a
version (JSON + safetensors only, never unpickling), checks the SHA-256 of the weights recorded at
registration and that every weight is finite: a truncated or garbled file cannot be promoted.

>>> import tempfile
>>> from streamrec.model.config import ModelConfig
>>> from streamrec.model.transformer import build_model
>>> from streamrec.model.vocab import ItemVocab
>>> reg = Registry(tempfile.mkdtemp())
>>> m = build_model(ModelConfig(n_items=3, max_len=4, d_model=8, n_heads=1, n_layers=1))
>>> v1 = reg.register(model=m, vocab=ItemVocab.from_ids([10, 20, 30]), cutoff=100)
>>> v2 = reg.register(model=m, vocab=ItemVocab.from_ids([10, 20, 30]), parent=v1, cutoff=200)
>>> _ = reg.promote(v1); _ = reg.promote(v2); reg.champion()
'v2'
>>> reg.rollback(), reg.get("v2").status
('v1', 'retired')
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streamrec.model.checkpoint import CARD, WEIGHTS, Checkpoint, load_checkpoint, save_checkpoint

INDEX, LOCK = "index.json", ".lock"
STATUSES = ("candidate", "champion", "retired", "rejected")
_VERSION = re.compile(r"^v?(\d+)$")


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown version, no champion, bad state)."""


class ChampionChangedError(RegistryError):
    """``promote(..., expect_champion=)`` found another champion than expected."""


class NoRegistryError(RegistryError):
    """``Registry(root, create=False)``: there is no directory at ``root``."""


class CorruptCheckpointError(RegistryError):
    """A version's files are missing, truncated, garbled or do not match what was registered."""


@dataclass
class ModelVersion:
    version: str  # "v1", "v2", ...
    status: str  # candidate | champion | retired | rejected
    parent: str | None  # version this one was warm-started from (None: trained from scratch)
    cutoff_time: int | None  # newest event (Unix seconds) in the training data
    metrics: dict = field(default_factory=dict)  # offline metrics (gate NDCG@10 of both models ...)
    training_seconds: float | None = None
    created: str = ""  # ISO 8601 UTC
    sha256: str = ""  # of model.safetensors at registration
    n_items: int = 0
    kind: str = ""
    reason: str | None = None  # why it was rejected
    status_changed: str = ""  # ISO 8601 UTC of the last status change

    @property
    def number(self) -> int:
        return int(self.version[1:])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def normalize_version(version: str | int) -> str:
    """``3``, ``"3"`` and ``"v3"`` all name version ``"v3"``."""
    m = _VERSION.match(str(version).strip())
    if not m:
        raise RegistryError(f"not a registry version: {version!r} (expected v1, v2, ...)")
    return f"v{int(m.group(1))}"


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Registry:
    """The registry at ``root``: created if missing, unless ``create=False`` (reading it, e.g. listing
    its versions, must not leave an empty registry behind a mistyped path: ``NoRegistryError``)."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root} is a file, not a registry directory")
        if not create and not self.root.is_dir():
            raise NoRegistryError(f"no registry at {self.root} (no such directory; `streamrec retrain` creates one)")
        self.root.mkdir(parents=True, exist_ok=True)

    # --- index ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        with open(self.root / LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> dict:
        path = self.root / INDEX
        if not path.exists():
            return {"champion": None, "history": [], "next": 1, "versions": {}}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:  # cannot happen through this class (atomic writes)
            raise RegistryError(f"{path} is not valid JSON: {e}") from e

    def _write(self, index: dict) -> None:
        _write_json_atomic(self.root / INDEX, index)

    @staticmethod
    def _info(index: dict, version: str) -> ModelVersion:
        d = index["versions"].get(version)
        if d is None:
            raise RegistryError(f"no version {version} in the registry (have {', '.join(index['versions']) or 'none'})")
        return ModelVersion(**d)

    # --- queries --------------------------------------------------------------------------------

    def get(self, version: str | int) -> ModelVersion:
        return self._info(self._read(), normalize_version(version))

    def list(self) -> list[ModelVersion]:
        """Every version, oldest first."""
        index = self._read()
        return sorted((ModelVersion(**d) for d in index["versions"].values()), key=lambda v: v.number)

    def champion(self) -> str | None:
        """The version workers should serve, or None before the first promotion."""
        return self._read()["champion"]

    def history(self) -> list[str]:
        """Champions in promotion order; the last is the current one, rollback pops it."""
        return list(self._read()["history"])

    def path(self, version: str | int) -> Path:
        """Checkpoint directory of a version (for ``load_checkpoint`` / ``TransformerRecommender``)."""
        version = normalize_version(version)
        self._info(self._read(), version)  # raises for an unknown version
        return self.root / version

    def load(self, version: str | int, device: str = "cpu") -> Checkpoint:
        """Verify, then load a version's checkpoint."""
        version = normalize_version(version)
        self.verify(version)
        return load_checkpoint(self.root / version, device)

    def verify(self, version: str | int) -> ModelVersion:
        """Raise ``CorruptCheckpointError`` unless the version's checkpoint loads, matches the
        SHA-256 recorded at registration, agrees with its vocabulary and has finite weights."""
        version = normalize_version(version)
        info = self.get(version)
        d = self.root / version
        for name in (WEIGHTS, CARD):
            if not (d / name).is_file():
                raise CorruptCheckpointError(f"{version}: {d / name} is missing")
        digest = _sha256(d / WEIGHTS)
        if info.sha256 and digest != info.sha256:
            raise CorruptCheckpointError(
                f"{version}: {WEIGHTS} changed since registration (sha256 {digest[:12]}, "
                f"registered {info.sha256[:12]})")
        try:
            ck = load_checkpoint(d)
        except Exception as e:  # safetensors header/size errors, bad JSON, shape mismatches ...
            raise CorruptCheckpointError(f"{version}: checkpoint does not load: {type(e).__name__}: {e}") from e
        if len(ck.vocab) != ck.model.cfg.n_items:
            raise CorruptCheckpointError(f"{version}: card has {len(ck.vocab)} items, model {ck.model.cfg.n_items}")
        return info  # (non-finite weights: load_checkpoint refuses them)

    # --- changes --------------------------------------------------------------------------------

    def register(
        self,
        checkpoint_dir: str | Path | None = None,
        *,
        model=None,
        vocab=None,
        parent: str | None = None,
        cutoff: int | None = None,
        metrics: dict | None = None,
        training_seconds: float | None = None,
        **card,
    ) -> str:
        """Add a version with status ``candidate``; returns its name (``"v3"``).

        Either copy an existing ``checkpoint_dir`` or write ``model`` + ``vocab``. ``card`` adds
        fields to the checkpoint's card.json (e.g. ``train=``, ``data=``)."""
        if (checkpoint_dir is None) == (model is None):
            raise ValueError("give either checkpoint_dir or model and vocab")
        parent = normalize_version(parent) if parent is not None else None
        with self._locked():
            index = self._read()
            taken = [int(p.name[1:]) for p in self.root.glob("v*") if _VERSION.match(p.name)]
            number = max([index["next"] - 1, *taken]) + 1  # skips a directory orphaned by a crash
            version = f"v{number}"
            tmp = self.root / f".{version}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if checkpoint_dir is not None:
                src = Path(checkpoint_dir)
                if not (src / WEIGHTS).is_file() or not (src / CARD).is_file():
                    raise CorruptCheckpointError(f"{src} is not a checkpoint: expected {WEIGHTS} and {CARD}")
                tmp.mkdir()
                shutil.copy2(src / WEIGHTS, tmp / WEIGHTS)
                full = json.loads((src / CARD).read_text())
            else:
                save_checkpoint(tmp, model, vocab)
                full = json.loads((tmp / CARD).read_text())
            full.setdefault("checkpoint_version", full.get("version"))
            full.update(card)
            full.update(version=version, parent=parent, cutoff_time=cutoff, metrics=metrics or {},
                        training_seconds=training_seconds)
            full["items"] = full.pop("items")  # keep the long id list last, as save_checkpoint does
            _write_json_atomic(tmp / CARD, full)
            os.replace(tmp, self.root / version)
            now = _now()
            info = ModelVersion(
                version=version, status="candidate", parent=parent,
                cutoff_time=None if cutoff is None else int(cutoff), metrics=metrics or {},
                training_seconds=training_seconds, created=now, sha256=_sha256(self.root / version / WEIGHTS),
                n_items=len(full["items"]), kind=full.get("config", {}).get("kind", ""), status_changed=now,
            )
            index["versions"][version] = asdict(info)
            index["next"] = number + 1
            self._write(index)
        return version

    def promote(self, version: str | int, expect_champion: str | None | bool = False) -> str:
        """Make ``version`` the champion (the old one becomes ``retired``). Any status may be
        promoted by hand, but only after ``verify`` passes: a corrupt version raises
        ``CorruptCheckpointError`` and the champion stays as it was.

        ``expect_champion`` (a version, or None for "no champion"): compare-and-swap, raise
        ``ChampionChangedError`` if the champion is no longer that one (the retraining job gated
        its candidate against it; a promotion by hand in the meantime wins)."""
        version = normalize_version(version)
        with self._locked():
            index = self._read()
            self._info(index, version)
            if expect_champion is not False and index["champion"] != expect_champion:
                raise ChampionChangedError(
                    f"champion is {index['champion']}, not {expect_champion}: {version} was not promoted")
            if index["champion"] == version:
                return version
            self.verify(version)
            now = _now()
            old = index["champion"]
            if old is not None:
                index["versions"][old].update(status="retired", status_changed=now)
            index["versions"][version].update(status="champion", status_changed=now, reason=None)
            index["champion"] = version
            index["history"].append(version)
            self._write(index)
        return version

    def reject(self, version: str | int, reason: str) -> str:
        version = normalize_version(version)
        with self._locked():
            index = self._read()
            self._info(index, version)
            if index["champion"] == version:
                raise RegistryError(f"{version} is the champion: roll back or promote another version first")
            index["versions"][version].update(status="rejected", reason=reason, status_changed=_now())
            self._write(index)
        return version

    @staticmethod
    def _previous(history: list[str]) -> str:
        if len(history) < 2:
            raise RegistryError("nothing to roll back to: no previous champion")
        return history[-2]

    def rollback_target(self) -> str:
        """The champion ``rollback`` would reinstate now; ``RegistryError`` if there is none."""
        return self._previous(self.history())

    def rollback(self) -> str:
        """Retire the champion and reinstate the previous one (verified first); returns it."""
        with self._locked():
            index = self._read()
            history = index["history"]
            previous = self._previous(history)
            current = history[-1]
            self.verify(previous)
            now = _now()
            index["versions"][current].update(status="retired", status_changed=now)
            index["versions"][previous].update(status="champion", status_changed=now)
            index["champion"] = previous
            history.pop()
            self._write(index)
        return previous


def format_versions(versions: list[ModelVersion]) -> str:
    """A table for ``streamrec models``: one line per version, the champion marked with ``*``."""
    lines = [f"  {'version':8s} {'status':10s} {'parent':7s} {'cutoff (UTC)':20s} {'items':>6s} "
             f"{'NDCG@10':>8s} {'champ.':>8s} {'train s':>8s}  created / reason"]
    for v in versions:
        gate = v.metrics.get("gate", {}) if isinstance(v.metrics, dict) else {}
        num = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        cutoff = "-" if v.cutoff_time is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.cutoff_time))
        secs = "-" if v.training_seconds is None else f"{v.training_seconds:.1f}"
        lines.append(
            f"{'*' if v.status == 'champion' else ' '} {v.version:8s} {v.status:10s} {v.parent or '-':7s} {cutoff:20s} "
            f"{v.n_items:6d} {num(gate.get('NDCG@10')):>8s} {num(gate.get('champion_NDCG@10')):>8s} {secs:>8s}  "
            f"{v.created}" + (f"  {v.reason}" if v.reason else ""))
    return "\n".join(lines)
