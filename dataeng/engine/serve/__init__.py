"""Using a model: predict masks, mattes and cutouts on any images; export it to ONNX.

Reads a train run's checkpoint (or an exported ONNX file) and image files; writes output
images (compositing.py holds the pure kernels) and ONNX models checked against PyTorch.
"""
