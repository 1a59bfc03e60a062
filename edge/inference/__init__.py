"""Local inference: ONNX models fed windows of tag values, producing score tags (and alarms).

`model.py` runs a model as a pipeline stage; `pca.py` builds the small anomaly model the demo's
pump ships with (reconstruction error of a PCA fit to normal operation) using only `onnx.helper`.
"""
