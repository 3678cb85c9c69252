"""Generated gRPC/protobuf modules for package voltana.v1."""
