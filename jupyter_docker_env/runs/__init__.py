"""Training runs: a script or a notebook as a detached container of an environment's image."""
