"""Save and load a trained network with its history and config, atomically and with clear errors."""

import json
import os
import tempfile
from pathlib import Path

import torch

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
CHECKPOINT = CHECKPOINT_DIR / "simplecnn.pt"  # the committed run: published recipe, seed 0
FORMAT = "cnn-from-scratch checkpoint v1"


class CheckpointError(ValueError):
    """A file that is not a checkpoint of ours, is damaged, or holds a different architecture."""


def _atomic_write(path, write):
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def save_checkpoint(path, model, history=None, config=None, training_state=None):
    """Write model weights, the training history and config to ``path`` (atomic).

    training_state (optimizer, scheduler and random generator states) is what ``--resume``
    needs to continue a run exactly; a finished run leaves it out to stay small.
    """
    payload = {
        "format": FORMAT,
        "architecture": type(model).__name__,
        "model": model.state_dict(),
        "history": history or {},
        "config": config or {},
        "training_state": training_state,
    }
    _atomic_write(path, lambda f: torch.save(payload, f))


def save_json(path, obj):
    """Write obj as indented JSON (atomic)."""
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def load_checkpoint(path, model=None):
    """Read a checkpoint written by ``save_checkpoint``; with ``model``, also load its weights into it.

    Returns the dict {"architecture", "model", "history", "config", "training_state", ...}.
    Raises FileNotFoundError for a missing file and CheckpointError for a damaged file or one
    whose weights do not fit ``model``.
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by helpers.save_checkpoint (expected format {FORMAT!r})")
    if model is not None:
        _check_fits(path, ckpt, model)
        model.load_state_dict(ckpt["model"])
    return ckpt


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
