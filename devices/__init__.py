"""Simulated devices: each holds its own data, trains locally and returns only an update."""
