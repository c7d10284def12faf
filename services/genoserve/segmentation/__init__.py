"""Cell segmentation (Cellpose style): pure numpy/scipy pre- and post-processing.

Images are normalised per channel (1st/99th percentiles), optionally rescaled to the model's cell
diameter, cut into overlapping tiles that the model turns into flows (dY, dX) and a cell
probability logit, stitched back with blending, and turned into instance label masks by following
the flows (``dynamics``). No protobuf, no gRPC.
"""
