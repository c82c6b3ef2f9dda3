"""Losses, one module per paper; every function cites the equation it implements."""
