"""The one exception type for user-facing errors.

Anything a user can get wrong (a path, a name, a shape, a value) raises ``BoxhackError``
with a message that says what was wrong and what to do; the CLI prints it on one line
and exits non-zero, without a traceback.
"""


class BoxhackError(ValueError):
    """A user error: bad input, a missing or corrupt file, an unknown name."""


class NotFittedError(BoxhackError, AttributeError):
    """A monitor (or other estimator) was used before ``fit``; like scikit-learn's error of
    the same name, it is both a ``ValueError`` and an ``AttributeError``."""
