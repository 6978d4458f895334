"""Generated protobuf and gRPC code for mbostream.v1: do not edit, run scripts/generate."""
