"""``python -m harness``: the CLI, as ``torchrun -m harness run ...`` starts each rank."""
import sys

from harness.cli import main

sys.exit(main())
