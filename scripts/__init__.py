"""Python code of the Mamba-UNet bundle, referenced from configs/*.json (`_target_`, `$scripts...` expressions).

Importing the package installs a small `sys.excepthook` wrapper: when a run stops because of bad input data
(``scripts.data.InputDataError`` anywhere in the exception chain, e.g. wrapped by MONAI's Compose or the config
parser), the console shows one line "ERROR: <path>: <problem>" instead of a page of nested tracebacks. Every other
exception keeps Python's normal traceback; MAMBA_UNET_TRACEBACK=1 restores it for input errors too.
"""

import os
import sys


def _clean_input_error_hook(exc_type, exc, tb, _previous=sys.excepthook):
    from scripts.data import find_input_error  # lazy: keep `import scripts` light

    input_error = find_input_error(exc) if exc is not None else None
    if input_error is None or os.environ.get("MAMBA_UNET_TRACEBACK"):
        _previous(exc_type, exc, tb)
        return
    print(f"ERROR: {input_error}", file=sys.stderr)
    print("(bad input data; nothing was written. Set MAMBA_UNET_TRACEBACK=1 for the full traceback.)", file=sys.stderr)
    # Exit at once: nothing needs finalising on this path, and interpreter teardown with the failed run's objects
    # still referenced (h5py handles, loader threads) has been seen to hang after the message was printed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


if getattr(sys.excepthook, "__name__", "") != "_clean_input_error_hook":
    sys.excepthook = _clean_input_error_hook
