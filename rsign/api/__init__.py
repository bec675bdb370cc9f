"""gRPC transport: the only package that imports ``grpc`` and the generated ``rsign.v1`` code."""
