"""Training of the single-cell embedding family: scVI's VAE in PyTorch, a count simulator,
evaluation against a PCA baseline, and export of the encoder to ONNX (needs the train extra)."""
