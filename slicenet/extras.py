"""Packages a command needs, checked where the command starts, before it writes anything.

onnx, onnxruntime, openvino and matplotlib come with the main install (the README's "Using it" lines
need them); ray is the ``slicenet[ray]`` extra. A missing one is a one-line error naming the command
that installs it, not an ImportError traceback half-way through a write.
"""

from __future__ import annotations

import importlib

from .errors import InputError

INSTALL = {  # module -> how to install it
    "onnx": "pip install slicenet (onnx is part of the main install)",
    "onnxruntime": "pip install slicenet (onnxruntime is part of the main install)",
    "openvino": "pip install slicenet (openvino is part of the main install)",
    "matplotlib": "pip install slicenet (matplotlib is part of the main install)",
    "ray": "pip install 'slicenet[ray]'",
}


def require(*modules: str, purpose: str) -> None:
    """Import each module, or fail with one line naming it, what needs it and how to install it."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise InputError(f"{purpose} needs {module}, which is not installed: "
                             f"{INSTALL.get(module, f'pip install {module}')}") from None
