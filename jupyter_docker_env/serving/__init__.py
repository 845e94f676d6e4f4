"""Serving images: an environment's runtime, a model and a handler behind an HTTP server.

``builder`` makes them (``slim`` decides what of the environment stays, ``dockerfile`` writes the
two-stage Dockerfile, ``probe`` and ``prune`` run inside the build), ``manager`` is the service
the REST handlers and the command line use, and ``runtime`` is the server that runs inside the
image.
"""
