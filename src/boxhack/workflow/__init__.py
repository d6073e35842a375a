"""The top of the stack: the experiment registry (declaration + presentation), running and
summarising experiments, ``reproduce`` and ``report``. It may import every layer below it;
nothing below imports it."""
