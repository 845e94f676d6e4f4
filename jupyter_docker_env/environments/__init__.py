"""Environments: folder → spec → Dockerfile → image and lock, and the service that manages them."""
