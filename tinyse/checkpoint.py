"""Checkpoints: model weights, optimiser state and training progress in one ``.npz`` file.

Layout of the file (plain arrays; ``np.load(path)`` opens it without pickle):
    model/<key>       every entry of ``model.state_dict()`` (PyTorch's key names)
    optimizer/<key>   every entry of ``optimizer.state_dict()`` (absent from a weights-only file)
    ema/<key>         with a moving average of the weights: ``ModelEMA.state_dict()`` (decay, steps,
                      model/<key> the averaged weights)
    meta              a JSON string: epoch, step, the run's config, best accuracy, ...
Files are written to a temporary name beside the target and renamed when
complete, so an interruption never leaves a half-written checkpoint.
"""
import json
import os
import tempfile

import numpy as np


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes a private file; give it an ordinary file's mode
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def save_checkpoint(path, model, optimizer, meta, ema=None):
    """Write model, optimiser (None: leave it out), the ``ModelEMA`` ``ema`` (if any) and ``meta``
    (a JSON-able dict) to ``path`` atomically. ``model`` may also be a ``state_dict()`` (a dict of arrays)."""
    weights = model if isinstance(model, dict) else model.state_dict()
    arrays = {f"model/{k}": v for k, v in weights.items()}
    if optimizer is not None:
        arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    if ema is not None:
        arrays.update({f"ema/{k}": np.asarray(v) for k, v in ema.state_dict().items()})
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
    """(model state, optimiser state, meta) from a checkpoint file, as NumPy arrays and a dict."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            model = _section(archive, "model/")
            optimizer = _section(archive, "optimizer/")
            meta = json.loads(str(archive["meta"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a tinyse checkpoint (or it is damaged): {error}") from None
    return model, optimizer, meta


def load_ema(path):
    """The ``ModelEMA.state_dict()`` saved in a checkpoint, or None when it has no moving average."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return _section(archive, "ema/") or None
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a tinyse checkpoint (or it is damaged): {error}") from None


def _section(archive, prefix):
    """{key without ``prefix``: array} for the archive's keys that start with ``prefix``."""
    return {k[len(prefix):]: archive[k] for k in archive.files if k.startswith(prefix)}
