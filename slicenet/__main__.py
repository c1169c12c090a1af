"""``python -m slicenet``: the same command as ``slicenet``, for environments whose scripts folder is not on
PATH (a venv not activated, ``pip install --user``)."""

import sys

from .cli import main

sys.exit(main())
