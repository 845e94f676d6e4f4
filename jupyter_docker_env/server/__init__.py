"""The Jupyter Server side: the extension application and its REST handlers."""
