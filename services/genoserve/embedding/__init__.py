"""Single-cell embedding family (scVI style): gene alignment by name, count validation, sparse
counts, batch covariates, chunked .h5ad / 10x .h5 IO, embedding metrics. Pure numpy + h5py."""
