"""Variant calling family (DeepVariant style): TFRecord/tf.Example codecs, candidates, pileups.

Pure numpy (plus pysam for BAM and FASTA access); no TensorFlow, no gRPC.
"""
