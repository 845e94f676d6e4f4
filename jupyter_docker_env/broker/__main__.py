"""``python -m jupyter_docker_env.broker``: run the launch broker."""

import sys

from .app import main

sys.exit(main())
