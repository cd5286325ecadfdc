"""Checkpoints: model weights, optimiser state and training progress in one ``.npz`` file.

Layout of the file (plain arrays; ``np.load(path)`` opens it without pickle):
    model/<key>       every entry of ``model.state_dict()`` (PyTorch's key names)
    optimizer/<key>   every entry of ``optimizer.state_dict()``
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


def save_checkpoint(path, model, optimizer, meta):
    """Write model, optimiser and ``meta`` (a JSON-able dict) to ``path`` atomically."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
    """(model state, optimiser state, meta) from a checkpoint file, as NumPy arrays and a dict."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            model = {k[len("model/"):]: archive[k] for k in archive.files if k.startswith("model/")}
            optimizer = {k[len("optimizer/"):]: archive[k] for k in archive.files if k.startswith("optimizer/")}
            meta = json.loads(str(archive["meta"]))
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a tinyse checkpoint (or it is damaged): {error}") from None
    return model, optimizer, meta
