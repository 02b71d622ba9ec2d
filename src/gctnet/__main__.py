"""``python -m gctnet`` (also what ``torchrun -m gctnet train ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
