"""gRPC server bootstrap, thin servicers, codecs (proto <-> numpy) and interceptors."""
