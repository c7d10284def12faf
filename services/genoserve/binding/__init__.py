"""Sequence binding family: DNA encoding, strand handling, variant windows, mutagenesis.

Pure numpy (plus pysam for reference FASTA access); no protobuf, no gRPC.
"""
