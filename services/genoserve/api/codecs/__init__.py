"""Conversion between protobuf messages and numpy/domain objects; one module per family."""
