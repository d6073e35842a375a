"""boxhack: attack, test and harden abstraction-based novelty monitors of neural networks.

Data flows one way: data -> models -> monitor -> attacks -> experiments -> report;
the CLI (``boxhack.cli``) is a thin layer over the public functions of those modules.
"""

from boxhack.errors import BoxhackError

__version__ = "0.1.0"
__all__ = ["BoxhackError", "__version__"]
