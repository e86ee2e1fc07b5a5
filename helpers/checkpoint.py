"""Save and load a trained network with its history and config: atomically, checksummed, with clear errors.

A checkpoint is one ``torch.save`` file holding a dict: the format tag, the architecture's name, the
model's weights, the training history, the config, the training state (what ``--resume`` needs, or
None) and a SHA-256 checksum of each of those parts. ``save_checkpoint`` is the only writer of the
format; ``load_checkpoint`` checks everything before handing anything out.
"""

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
CHECKPOINT = CHECKPOINT_DIR / "simplecnn.pt"  # the committed run: published recipe, seed 0
FORMAT = "cnn-from-scratch checkpoint v2"  # v2 added the checksums
FORMATS = ("cnn-from-scratch checkpoint v1", FORMAT)  # v1 files still load: they have no checksums to check
# every part of a checkpoint, the type it must have, and what it is called in an error message
PARTS = {
    "architecture": (str, "architecture name"),
    "model": (dict, "model weights"),
    "history": (dict, "training history"),
    "config": (dict, "config"),
    "training_state": ((dict, type(None)), "training state"),
}
_STARTED = time.time()  # about when this process started: older temporaries cannot be saves it is making


class CheckpointError(ValueError):
    """A file that is not a checkpoint of ours, is damaged, or holds a different architecture."""


def _atomic_write(path, write):
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file.

    The temporary, ``.NAME.PID.XXXXXXXX.tmp``, carries the writer's process id, so that a later save can
    tell the leftovers of a killed one (see ``remove_orphaned_temporaries``) from a save still running.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def remove_orphaned_temporaries(path):
    """Delete the temporary files that interrupted saves of ``path`` left beside it; returns their paths.

    A save writes ``.NAME.PID.XXXXXXXX.tmp`` and renames it to NAME when complete, so one still there
    after process PID has ended (``kill -9``, a crash, a power cut) is garbage. One whose process still
    runs is another save in progress and stays. A leftover of the older naming, ``.NAME.XXXXXXXX.tmp``
    (no process id), goes only if it was last written before this process started. Process ids are
    those of this machine, and of this container: do not let two machines, or two containers (each has
    its own process ids), save into one shared folder at the same time.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.tmp")  # mkstemp: 8 of [a-z0-9_]
    removed = []
    for tmp in path.parent.iterdir():
        match = pattern.fullmatch(tmp.name)
        if match is None:
            continue
        pid = match.group(1)
        try:
            orphaned = not _still_running(int(pid)) if pid else tmp.stat().st_mtime < _STARTED
            if orphaned:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another save got there first
            pass
    return removed


def _still_running(pid):
    """Whether process ``pid`` exists on this machine (a zombie, or one of another user, counts)."""
    if os.name == "nt":  # os.kill there would terminate the process: never assume it is gone
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, and belongs to someone else
        return True
    return True


def _checksum(obj):
    """SHA-256 (hex) of a checkpoint part: the dtype, shape and bytes of every tensor and the type and
    value of every number, string and None in it, dict keys in sorted order. Equal parts, equal sums."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        digest.update(f"dict {len(obj)};".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):  # torch.load gives back what was saved, a tuple as a tuple
        digest.update(f"list {len(obj)};".encode())
        for item in obj:
            _feed(digest, item)
    elif obj is None or type(obj) in (bool, int, float, str):  # exactly: weights_only loading refuses subclasses
        digest.update(f"{type(obj).__name__} {obj!r};".encode())
    else:
        raise TypeError(
            f"a checkpoint holds tensors, numbers, strings, None, and lists and dicts of them; got a "
            f"{type(obj).__name__} ({obj!r:.80}): convert it, e.g. str(path), int(x) or tensor.tolist()"
        )


def _plain(obj):
    """obj with numpy scalars (np.float64(0.5), as numpy's and pandas' sums give) turned into Python
    numbers, and dicts, lists and tuples of any subclass (defaultdict, namedtuple) into plain ones:
    ``torch.save`` would pickle them, and ``load_checkpoint`` (weights_only) would refuse the file.
    Tensors stay tensors (they load as they are)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {_plain(key): _plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return (tuple if isinstance(obj, tuple) else list)(_plain(item) for item in obj)
    return obj


def save_checkpoint(path, model, history=None, config=None, training_state=None):
    """Write model weights, the training history and config to ``path`` (atomic, checksummed).

    training_state (optimizer, scheduler and random generator states) is what ``--resume``
    needs to continue a run exactly; a finished run leaves it out to stay small. Each part is stored
    with its SHA-256 (``_checksum``), which ``load_checkpoint`` verifies. Leftover temporaries of
    earlier interrupted saves of ``path`` are removed (``remove_orphaned_temporaries``).
    Numpy numbers in history, config or training_state are saved as Python numbers (``_plain``);
    anything else a checkpoint cannot hold raises TypeError before anything is written.
    """
    payload = {
        "format": FORMAT,
        "architecture": type(model).__name__,
        "model": model.state_dict(),
        "history": _plain(history or {}),
        "config": _plain(config or {}),
        "training_state": _plain(training_state),
    }
    payload["checksums"] = {part: _checksum(payload[part]) for part in PARTS}
    _atomic_write(path, lambda f: torch.save(payload, f))


def save_json(path, obj):
    """Write obj as indented JSON (atomic)."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def load_checkpoint(path, model=None):
    """Read a checkpoint written by ``save_checkpoint``; with ``model``, also load its weights into it.

    Returns the dict {"architecture", "model", "history", "config", "training_state", ...}.
    Raises FileNotFoundError for a missing file and CheckpointError for a damaged file (unreadable,
    a part missing, a part that does not match its checksum) or one whose weights do not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupted?): {type(error).__name__}: {error}"
        ) from None
    _check_parts(path, ckpt)
    if model is not None:
        _check_fits(path, ckpt, model)
        model.load_state_dict(ckpt["model"])
    return ckpt


def _check_parts(path, ckpt):
    """Every part present, of its type, and (format v2) equal to its checksum; else CheckpointError."""
    if not isinstance(ckpt, dict) or ckpt.get("format") not in FORMATS:
        raise CheckpointError(f"{path} was not written by helpers.save_checkpoint (expected format {FORMAT!r})")
    parts = dict(PARTS, checksums=(dict, "checksums")) if ckpt["format"] == FORMAT else PARTS
    missing = [f"{key!r} ({name})" for key, (_, name) in parts.items() if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is damaged or incomplete: it has no {' and no '.join(missing)}")
    wrong = [f"{key!r} ({name})" for key, (kind, name) in parts.items() if not isinstance(ckpt[key], kind)]
    if isinstance(ckpt["model"], dict):
        wrong += [f"model[{k!r}]" for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)]
    if wrong:
        raise CheckpointError(f"{path} is damaged: not what save_checkpoint writes: {', '.join(wrong)}")
    if ckpt["format"] == FORMAT:
        damaged = [name for key, (_, name) in PARTS.items() if not _matches_checksum(ckpt, key)]
        if damaged:
            raise CheckpointError(
                f"{path} is damaged: its {' and its '.join(damaged)} do not match the checksum saved with them "
                "(the file changed on disk or in a copy): restore it from a backup, or train again"
            )


def _matches_checksum(ckpt, key):
    try:
        return ckpt["checksums"].get(key) == _checksum(ckpt[key])
    except TypeError:  # damage made something no checkpoint holds (a set, bytes...)
        return False


def _check_fits(path, ckpt, model):
    saved, wanted = ckpt["model"], model.state_dict()
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in wanted.items() if k not in saved]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in saved.items() if k not in wanted]
    problems += [
        f"{k}: saved {tuple(saved[k].shape)}, model wants {tuple(v.shape)}"
        for k, v in wanted.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if problems:
        raise CheckpointError(
            f"{path} holds a {ckpt['architecture']} whose weights do not fit this {type(model).__name__}: "
            + "; ".join(problems)
        )
