"""The model server that runs inside a serving image (as the package ``docker_env_serving``).

Standard library only, plus gunicorn in front: the image needs nothing but the environment's
runtime packages. ``wsgi`` is the application, ``gunicorn_config`` the server's settings,
``healthcheck`` what the image's HEALTHCHECK runs.
"""
