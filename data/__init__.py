"""Data sets, partitioning across devices, and image preprocessing."""
