"""Run directories and atomic writes: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import platform
import shutil
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
        try:
            yield tmp_path
        except OSError as e:  # a writer's error (disk full...) often names no file: name the one being written
            if getattr(e, "filename", None) is None and e.errno is not None:
                raise OSError(e.errno, e.strerror or str(e), str(path)) from e
            raise
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
        with contextlib.suppress(OSError):  # no lock file left behind (a saved model folder gets uploaded)
            (p / LOCK_FILE).unlink()
        lock.release()


def folder_held(folder: str | os.PathLike[str]) -> bool:
    """Whether another process holds ``folder``'s actlab lock right now (this process's own locks do not count)."""
    from filelock import FileLock, Timeout

    p = Path(folder)
    lock_file = p / LOCK_FILE
    if not lock_file.exists() or str(p.resolve()) in _HELD:
        return False
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    with contextlib.suppress(OSError):
        lock_file.unlink()
    return False


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


_CURRENT: contextvars.ContextVar[Run | None] = contextvars.ContextVar("actlab_run", default=None)


def current_run() -> Run | None:
    """The run folder being written in this context (inside ``with Run(...)``), if any."""
    return _CURRENT.get()


def note_interventions(records: list[dict[str, Any]]) -> None:
    """Called by every application of interventions to a model (:class:`actlab.hooks.interventions.Edits`): the
    run being written records them, so ``run.json`` lists what was actually applied, once per distinct record."""
    run = _CURRENT.get()
    if run is not None and records:
        run.add_interventions(records)


class Run:
    """A run folder owned by the library: every long job (sweep, refusal, SAE training, fine-tuning, LFP...)
    records in ``run.json`` what it was asked to do and what happened, written atomically.

    ``run.json`` holds the command, its config, the seed, library versions, the git revision of actlab when
    available, the interventions applied to the model, start and end time, duration, and the status
    (``running`` while it runs, then ``ok``, ``failed`` with the error's first line, or ``interrupted``). A
    run re-entered in the same folder (resuming) keeps the earlier attempts under ``previous``. An attempt that
    the folder's resume record refuses (other settings) leaves ``run.json`` as it was when it recorded nothing,
    else ends ``refused``: the folder's results are not a failed run's.

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
        self._seen: set[str] = set()
        self._dirty, self._last_write = False, 0.0
        self.results: dict[str, Any] = {}
        self.status = "created"
        self.started: str | None = None
        self._t0 = 0.0
        self._previous: list[dict[str, Any]] = []
        self._before: str | None = None  # run.json as the folder held it, put back when a resume is refused

    def child(self, name: str, what: str = "name") -> Path:
        """A path inside the run folder for a name from a config (cannot leave the folder)."""
        return safe_child(self.path, name, what)

    def add_interventions(self, records: list[dict[str, Any]]) -> None:
        """Record interventions applied during the run (``Intervention.record()``), each distinct one once
        (a sweep applies the same cells batch after batch). Every application inside ``with Run(...)`` is
        recorded automatically; call this for edits made outside a forward (weights baked in)."""
        added = False
        for r in records:
            rec = {k: v for k, v in r.items() if k != "order"}
            key = json.dumps(rec, sort_keys=True, default=str)
            if key not in self._seen:
                self._seen.add(key)
                self.interventions.append(rec)
                added = True
        if added and self.status == "running":
            self._dirty = True
            if time.perf_counter() - self._last_write > 1.0:  # at most once a second during a long job
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
        self._dirty, self._last_write = False, time.perf_counter()
        return write_json(self.path / self.FILE, self.record())

    def start(self) -> Run:
        self.path.mkdir(parents=True, exist_ok=True)
        old = self.path / self.FILE
        if old.is_file():
            try:
                self._before = old.read_text(encoding="utf-8")
                prev = json.loads(self._before)
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
            token = _CURRENT.set(self)
            self._stack.callback(_CURRENT.reset, token)
            handler = logging.FileHandler(self.path / self.LOG, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            handler.setLevel(logging.INFO)
            log = logging.getLogger("actlab")
            if log.level == logging.NOTSET:  # actlab's default (INFO) unless the application chose a level
                log.setLevel(logging.INFO)
            log.addHandler(handler)
            self._stack.callback(handler.close)
            self._stack.callback(log.removeHandler, handler)
            self._handler = handler
            self._note(f"started: actlab {self.command} (config and versions in run.json)")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        from .errors import ResumeRefused

        try:
            if exc_type is None:
                self.finish("ok")
            elif issubclass(exc_type, KeyboardInterrupt):
                self.finish("interrupted")
            elif isinstance(exc, ResumeRefused):
                # the folder holds another run's results: not a failure of that run
                if self._before is not None and not self.results and not self.interventions:
                    write_text(self.path / self.FILE, self._before)  # nothing was recorded: left as it was
                    self._note(f"refused, run.json left as it was: {str(exc).splitlines()[0][:300]}")
                    return
                self.finish("refused", str(exc))
            else:
                self.finish("failed", f"{exc_type.__name__}: {exc}")
            self._note(f"finished: {self.status}" + (f" ({self.results['error']})" if self.results.get("error")
                                                      else ""))
        finally:
            self._stack.close()

    def _note(self, text: str) -> None:
        """A line in ``run.log`` only (not on the console): every run's log says when it started and ended."""
        import logging

        handler = getattr(self, "_handler", None)
        if handler is not None:
            handler.handle(logging.LogRecord("actlab", logging.INFO, __file__, 0, text, None, None))


# -- resume: the one format for "what is done, with which settings" ---------------------------------------
def settings_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two JSON-like settings."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += settings_differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True))
                for d in settings_differences(a, b, f"{prefix}{i}.")]
    return [] if old == new else [f"{prefix[:-1] or 'settings'} ({_short(old)} -> {_short(new)})"]


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:24] + "..." + s[-10:]


RESUME_DIR = ".resume"
CHECKPOINTS = "checkpoints"


class Resume:
    """What a long job has done in its folder, and under which settings: the one resume format every resumable
    job uses (the LFP stages, the A/B sweep, the activation cache, the refusal candidates, SAE and tuned-lens
    training, the evaluation grids...).

    A job names itself (``"steer sweep"``) and gives its *settings* (everything its results depend on).
    ``FOLDER/.resume/<job>.json`` records them with

    - **steps** marked done (:meth:`mark`, :meth:`done`, :meth:`need`: a stage's output or a clear error naming the
      step that makes it);
    - the job's **progress** (:meth:`save` / :meth:`load`): a JSON state plus optional tensors, written
      atomically - what a job needs to continue part way (the questions done, the shards written);
    - **checkpoints** (:meth:`checkpoint` / :meth:`latest` / :meth:`load_checkpoint`): numbered, each complete or
      absent, the last ``keep`` kept (``FOLDER/checkpoints/step_NNNNNNNN``).

    Opening a folder whose record has other settings is refused with one message naming what changed, unless
    ``overwrite`` (forget the record; the job starts again and rewrites its outputs) or ``allow_changed``
    (continue; the earlier settings stay in the record). Opening removes what an interrupted atomic write left
    (temp files in the folder, a half-written checkpoint). Open it while holding the folder (inside ``with
    Run(...)`` or :func:`folder_lock`)."""

    def __init__(self, folder: str | os.PathLike[str], job: str, settings: dict[str, Any], *, overwrite: bool = False,
                 allow_changed: bool = False, file: str | None = None):
        from .errors import ResumeRefused

        self.folder, self.job = Path(folder), job
        self.settings = json.loads(json.dumps(settings, default=_json_default))
        slug = file or "".join(c if c.isalnum() or c in "-_." else "-" for c in job)
        self.path = self.folder / RESUME_DIR / f"{slug}.json"
        self.tensors_path = self.folder / RESUME_DIR / f"{slug}.safetensors"
        self.folder.mkdir(parents=True, exist_ok=True)
        refuse_links(self.folder, self.path.parent, "resume record folder")
        self.removed = remove_orphan_temps(self.folder) + remove_orphan_temps(self.path.parent) \
            if self.path.parent.is_dir() else remove_orphan_temps(self.folder)
        ck = self.folder / CHECKPOINTS
        for d in ck.glob(".tmp_step_*") if ck.is_dir() else []:
            shutil.rmtree(d, ignore_errors=True)
        old = self._read()
        self.changed: list[str] = []
        self.overwritten = False
        if old is not None and overwrite:
            self.forget()
            self.overwritten = True
            old = None
        if old is not None:
            self.changed = settings_differences(old.get("settings"), self.settings)
            if self.changed and not allow_changed:
                raise ResumeRefused(
                    f"{self.folder} was written by '{job}' with other settings: {'; '.join(self.changed[:4])}"
                    f"{' ...' if len(self.changed) > 4 else ''}; pass --overwrite to start again, or choose another "
                    "folder")
        self.record: dict[str, Any] = old or {"format": "actlab-resume", "version": 1, "job": job, "steps": {},
                                              "progress": None}
        if self.changed:
            self.record.setdefault("settings_before", []).append(old.get("settings") if old else None)
        self.record["settings"] = self.settings
        self.resumed = old is not None and bool(old.get("steps") or old.get("progress") is not None
                                                or self.latest() is not None)

    @classmethod
    def recorded_settings(cls, folder: str | os.PathLike[str], job: str, file: str | None = None) -> Any:
        """The settings a folder's record of ``job`` holds (None when there is none), without opening it."""
        slug = file or "".join(c if c.isalnum() or c in "-_." else "-" for c in job)
        path = Path(folder) / RESUME_DIR / f"{slug}.json"
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return rec.get("settings") if isinstance(rec, dict) else None

    # -- the record ----------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any] | None:
        from .errors import InputError

        if not self.path.is_file():
            return None
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{self.path}: the resume record is damaged ({e}); pass --overwrite to start "
                             "again") from None
        if not isinstance(rec, dict) or rec.get("format") != "actlab-resume":
            raise InputError(f"{self.path} is not an actlab resume record; pass --overwrite to start again")
        return rec

    def _read_quietly(self) -> dict[str, Any]:
        try:
            rec = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def _write(self) -> None:
        self.record["updated"] = _now()
        write_json(self.path, self.record)

    def forget(self) -> None:
        """Drop the record, the progress tensors and the checkpoints (the job starts again)."""
        if getattr(self, "record", {}).get("checkpoint") or self._read_quietly().get("checkpoint"):
            shutil.rmtree(self.folder / CHECKPOINTS, ignore_errors=True)  # only a job that wrote them
        self.path.unlink(missing_ok=True)
        self.tensors_path.unlink(missing_ok=True)
        shutil.rmtree(self.tensors_path.with_suffix(".steps"), ignore_errors=True)
        self.record = {"format": "actlab-resume", "version": 1, "job": self.job, "steps": {}, "progress": None,
                       "settings": self.settings}

    # -- steps ---------------------------------------------------------------------------------------
    def done(self, step: str) -> bool:
        return step in self.record["steps"]

    def summary(self, step: str) -> dict[str, Any] | None:
        return self.record["steps"].get(step)

    def mark(self, step: str, summary: dict[str, Any] | None = None) -> None:
        """Record ``step`` as finished (its outputs are in place), with a JSON-ready summary."""
        self.record["steps"][step] = {"finished": _now(), **(summary or {})}
        self._write()

    def unmark(self, step: str) -> None:
        if self.record["steps"].pop(step, None) is not None:
            self._write()

    def _kept_path(self, step: str) -> Path:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in step)
        return self.tensors_path.with_suffix(".steps") / f"{slug}.json"

    def keep(self, step: str, result: Any) -> None:
        """Record ``step`` as finished with its JSON result, kept in a file of its own beside the record (a
        step of many small results: an evaluation's passes)."""
        write_json(self._kept_path(step), {"step": step, "result": result})
        self.mark(step)

    def kept(self, step: str) -> tuple[bool, Any]:
        """``(True, result)`` for a step finished with :meth:`keep` (its file readable), else ``(False, None)``."""
        if not self.done(step):
            return False, None
        try:
            return True, json.loads(self._kept_path(step).read_text(encoding="utf-8"))["result"]
        except (OSError, ValueError, KeyError, TypeError):
            return False, None

    def need(self, step: str, path: str | os.PathLike[str], how: str = "") -> Path:
        """``path``, an output of an earlier ``step``, or a clear error naming the step that makes it."""
        from .errors import InputError

        p = Path(path)
        if not p.exists() or not self.done(step):
            raise InputError(f"missing {p}: run the '{step}' step first{f' ({how})' if how else ''}")
        return p

    # -- progress within a job -----------------------------------------------------------------------
    def save(self, state: dict[str, Any], tensors: dict[str, Any] | None = None) -> None:
        """The job's progress so far (JSON state, optional tensors), atomically; tensors first, so a record
        never points at tensors that are not there."""
        if tensors is not None:
            from safetensors.torch import save_file

            with atomic_path(self.tensors_path) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        self.record["progress"] = {"state": state, "tensors": tensors is not None}
        self._write()

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """``(state, tensors)`` saved earlier under the same settings, or None."""
        prog = self.record.get("progress")
        if not isinstance(prog, dict):
            return None
        tensors: dict[str, Any] = {}
        if prog.get("tensors"):
            if not self.tensors_path.is_file():
                return None
            from safetensors.torch import load_file

            tensors = load_file(str(self.tensors_path))
        return prog.get("state") or {}, tensors

    def clear(self) -> None:
        """Forget the progress (the job finished; its results are written)."""
        self.tensors_path.unlink(missing_ok=True)
        if self.record.get("progress") is not None:
            self.record["progress"] = None
            self._write()

    # -- checkpoints ---------------------------------------------------------------------------------
    def checkpoint(self, step: int, tensors: dict[str, Any], state: dict[str, Any], *, keep: int = 2) -> Path:
        """Write checkpoint ``step`` (``state.safetensors`` + ``state.json``) complete or not at all, keeping
        the last ``keep``."""
        from safetensors.torch import save_file

        root = refuse_links(self.folder, self.folder / CHECKPOINTS, "checkpoint folder")
        root.mkdir(parents=True, exist_ok=True)
        final, tmp = root / f"step_{step:08d}", root / f".tmp_step_{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "job": self.job, **state}, default=_json_default))
        apply_umask(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for d in sorted(root.glob("step_*"))[:-max(keep, 1)]:
            shutil.rmtree(d, ignore_errors=True)
        self.record["checkpoint"] = final.name
        self._write()
        return final

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        return self.latest_in(self.folder)

    @staticmethod
    def latest_in(folder: str | os.PathLike[str]) -> Path | None:
        """The newest complete checkpoint folder under ``folder``, without opening a record."""
        root = Path(folder) / CHECKPOINTS
        cands = sorted(d for d in root.glob("step_*") if (d / "state.json").is_file()) if root.is_dir() else []
        return cands[-1] if cands else None

    @staticmethod
    def forget_jobs(folder: str | os.PathLike[str], prefix: str) -> None:
        """Drop the records of every job whose name starts with ``prefix`` (e.g. the per-rank parts of a
        distributed job, once merged)."""
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in prefix)
        root = Path(folder) / RESUME_DIR
        for f in root.glob(f"{slug}*") if root.is_dir() else []:
            f.unlink()

    @staticmethod
    def load_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(state, tensors)`` of a checkpoint folder."""
        from safetensors.torch import load_file

        folder = Path(folder)
        return json.loads((folder / "state.json").read_text()), load_file(str(folder / "state.safetensors"))
