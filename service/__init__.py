"""Online inference: model packages (models/<name>/<version>/) served with onnxruntime over HTTP.

Never imports torch or `training`: the model package format (docs/model-package.md) is all it shares
with the training side. Start it with `python -m service`; build it in code with `service.app.create_app`.
"""
