"""Notebooks that carry their environment: ``metadata.docker_env`` written on save (saving.py),
validated (record.py), compared with the environments here (compare.py) and recreated from its
spec and lock (restore.py); service.py joins them for the REST API and the command line."""
