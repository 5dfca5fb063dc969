"""Embedding with a trained model: the Encoder over torch, onnxruntime and TensorRT, ``embed`` for
files and folders, classification, and the Ray actor pools that run Encoders on a cluster."""
