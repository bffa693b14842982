"""Run the project's devices and strategies on real machines with Flower.

``flower_app.server_app:app`` (a Flower ServerApp) and
``flower_app.client_app:app`` (a Flower ClientApp) are declared in the
project's ``pyproject.toml``. They are thin adapters: local training is
``devices.Device.fit``, aggregation is ``engine.strategies``, validation is
``engine.aggregation.update_problem`` and central evaluation is
``devices.trainer.ModelReplica.evaluate``, exactly as in the in-process engine.

Importing this package (or ``config``, ``records``, ``client_app``) never
imports TensorFlow; only the modules that train or evaluate do, on first use.
"""
