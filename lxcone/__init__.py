"""LXCoNe: system containers for OpenNebula."""

__version__ = "0.1.0"
