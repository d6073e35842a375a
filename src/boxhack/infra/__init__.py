"""Infrastructure that knows nothing of models or monitors: safe files, exact arrays in JSON."""
