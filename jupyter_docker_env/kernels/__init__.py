"""Kernels in containers: kernel specs, resources and the kernel provisioner."""
