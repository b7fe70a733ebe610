"""``python -m reparam IN OUT``: see :mod:`reparam.cli`."""
import sys

from .cli import main

sys.exit(main())
