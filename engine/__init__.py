"""The in-process federated engine: server, rounds, strategies, metrics, CLI."""
