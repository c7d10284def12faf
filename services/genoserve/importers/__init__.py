"""Converters from the tools users train with (cellpose, scvi-tools, PyTorch) to genoserve models."""
