"""Variant calling family (DeepVariant style): TFRecord/tf.Example codecs, candidates, local
realignment, pileups, the calling pipeline (sites, postprocessing, VCF) and hap.py-like evaluation.

Pure numpy, with pysam for BAM, FASTA and VCF files and the SSW library (ssw-py) for the
realigner's alignments; no TensorFlow, no gRPC.
"""
