"""The one `set_seed`: Python, NumPy and torch (CPU and CUDA) from a single integer."""

from __future__ import annotations

import random


def set_seed(seed: int) -> None:
    """Seed every random-number generator fnbody uses, so seeded CPU runs are reproducible."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # numpy is a dependency, but seeding must not be what fails
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
