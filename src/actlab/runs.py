"""Run directories and atomic writes: nothing half-written is ever left under a final name."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def file_mode() -> int:
    """The mode a new file gets under the user's umask (``0666 & ~umask``)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def apply_umask(path: str | os.PathLike[str]) -> None:
    """Give a file, or every file under a folder, the user's usual mode: some writers (``mkstemp``,
    safetensors >= 0.8, ``save_pretrained`` through it) create files 0600 whatever the umask."""
    p = Path(path)
    mode = file_mode()
    for f in [p] if p.is_file() else (x for x in p.rglob("*") if x.is_file() and not x.is_symlink()):
        os.chmod(f, mode)


TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.{name}.XXXX.tmp``); rename it onto ``path`` with the user's
    usual file mode only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())  # after writing: the writer may have re-created the file as 0600
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


LOCK_FILE = ".actlab.lock"
_HELD: dict[str, list[Any]] = {}


@contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str = "folder") -> Iterator[None]:
    """Hold ``folder/.actlab.lock`` (filelock) while writing into it, so two actlab processes never write one
    cache or run folder at once; re-entrant within a process (a job and the cache it fills share one lock)."""
    from filelock import FileLock, Timeout

    from .errors import InputError

    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    key = str(p.resolve())
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    lock = FileLock(str(p / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"another actlab process is writing the {what} {str(p)!r} (it holds {LOCK_FILE}); wait "
                         "for it or use another folder") from None
    _HELD[key] = [lock, 1]
    try:
        yield
    finally:
        del _HELD[key]
        lock.release()


def remove_orphan_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files an interrupted atomic write left in ``folder`` (not recursive); returns them."""
    out = []
    for f in Path(folder).glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        if f.is_file():
            f.unlink()
            out.append(f)
    return out


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write JSON atomically (UTF-8, indented, non-ASCII kept)."""
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries results depend on."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("actlab", "torch", "transformers", "accelerate", "safetensors", "numpy", "trl"):
        try:
            out[mod] = md.version(mod)
        except md.PackageNotFoundError:  # a missing optional library is recorded as absent, not fatal
            out[mod] = "absent"
    return out


def git_revision() -> dict[str, Any] | None:
    """The git commit of the actlab source (and whether it has uncommitted changes), when it is a checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=3)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def no_link_below(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether no part of ``path`` below ``root`` (the file itself included) is a symbolic link: reads and
    writes of a run folder never follow one, so a link cannot pull an outside file into a report or send a
    job's output outside the folder."""
    root_p, p = Path(root), Path(path)
    try:
        rel = p.relative_to(root_p)
    except ValueError:
        return False
    cur = root_p
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            return False
    return True


def refuse_links(root: str | os.PathLike[str], path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` when nothing below ``root`` on its way is a symbolic link; else a one-line error naming it."""
    from .errors import InputError

    root_p, p = Path(root), Path(path)
    cur = root_p
    for part in p.relative_to(root_p).parts:
        cur = cur / part
        if cur.is_symlink():
            raise InputError(f"{what} {str(cur)!r} is a symbolic link (to {os.readlink(cur)!r}); actlab does not "
                             "write through links inside a run folder - remove it or choose another folder")
    return p


def safe_child(root: str | os.PathLike[str], name: str, what: str = "name") -> Path:
    """``root / name`` for a name taken from a config, refusing one that would leave ``root`` (by ``..``, an
    absolute path, or a symbolic link inside ``root``)."""
    from .errors import InputError

    root_p = Path(root)
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        raise InputError(f"{what} {name!r} must be a plain relative name inside {root_p} (no '..', no absolute "
                         "path)")
    return refuse_links(root_p, root_p / name, what)


class Run:
    """A run folder owned by the library: every long job (sweep, refusal, SAE training, fine-tuning, LFP...)
    records in ``run.json`` what it was asked to do and what happened, written atomically.

    ``run.json`` holds the command, its config, the seed, library versions, the git revision of actlab when
    available, the interventions applied to the model, start and end time, duration, and the status
    (``running`` while it runs, then ``ok``, ``failed`` with the error's first line, or ``interrupted``). A
    run re-entered in the same folder (resuming) keeps the earlier attempts under ``previous``.

    >>> with Run(out, "steer sweep", config) as run:
    ...     run.add_interventions(edits.records())
    ...     run.results["cells"] = 12
    """

    FILE = "run.json"

    def __init__(self, folder: str | os.PathLike[str], command: str, config: dict[str, Any] | None = None, *,
                 seed: int | None = None):
        self.path = Path(folder)
        # the command is also kept inside the config, where the first wave's run.json had it
        self.command, self.config, self.seed = command, {"command": command, **dict(config or {})}, seed
        self.interventions: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.status = "created"
        self.started: str | None = None
        self._t0 = 0.0
        self._previous: list[dict[str, Any]] = []

    def child(self, name: str, what: str = "name") -> Path:
        """A path inside the run folder for a name from a config (cannot leave the folder)."""
        return safe_child(self.path, name, what)

    def add_interventions(self, records: list[dict[str, Any]]) -> None:
        """Record interventions applied during the run (``Edits.records()``, ``Intervention.record()``)."""
        self.interventions += [dict(r) for r in records]
        if self.status == "running":
            self.write()

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": self.command, "config": self.config, "seed": self.seed, "versions": versions(),
            "git": git_revision(), "interventions": self.interventions, "started": self.started,
            "status": self.status,
        }
        if self.status != "running" and self.started is not None:
            out["ended"] = _now()
            out["duration_s"] = round(time.perf_counter() - self._t0, 3)
        if self.results:
            out["results"] = self.results
        if self._previous:
            out["previous"] = self._previous
        return out

    def write(self) -> Path:
        return write_json(self.path / self.FILE, self.record())

    def start(self) -> Run:
        self.path.mkdir(parents=True, exist_ok=True)
        old = self.path / self.FILE
        if old.is_file():
            try:
                prev = json.loads(old.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                prev = None
            if isinstance(prev, dict):
                self._previous = list(prev.get("previous") or [])
                self._previous.append({k: prev.get(k) for k in ("command", "started", "ended", "status")})
        self.started, self._t0, self.status = _now(), time.perf_counter(), "running"
        self.write()
        return self

    def finish(self, status: str = "ok", error: str | None = None) -> None:
        self.status = status
        if error:
            self.results.setdefault("error", error.splitlines()[0][:500] if error else "")
        self.write()

    LOG = "run.log"

    def __enter__(self) -> Run:
        """Lock the folder (no second process writes into it), start the record, and copy every actlab log
        line (progress included) into ``run.log``."""
        import logging
        from contextlib import ExitStack

        self._stack = ExitStack()
        try:
            self._stack.enter_context(folder_lock(self.path, "run folder"))
            self.start()
            handler = logging.FileHandler(self.path / self.LOG, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            handler.setLevel(logging.INFO)
            log = logging.getLogger("actlab")
            if log.level == logging.NOTSET:  # actlab's default (INFO) unless the application chose a level
                log.setLevel(logging.INFO)
            log.addHandler(handler)
            self._stack.callback(handler.close)
            self._stack.callback(log.removeHandler, handler)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc_type is None:
                self.finish("ok")
            elif issubclass(exc_type, KeyboardInterrupt):
                self.finish("interrupted")
            else:
                self.finish("failed", f"{exc_type.__name__}: {exc}")
        finally:
            self._stack.close()


def init_run_dir(path: str | os.PathLike[str], *, config: dict[str, Any], seed: int | None = None) -> Path:
    """Create ``path`` and record the run's config, versions and seed in ``run.json`` (the first wave's form;
    long jobs use :class:`Run`, which also records end time, duration, status and interventions)."""
    run = Run(path, str(config.get("command", "")), config, seed=seed)
    run.start()
    return run.path
