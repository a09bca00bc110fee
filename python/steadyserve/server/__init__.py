"""The network side of steadyserve: KServe V2 gRPC, gRPC health and reflection, HTTP probes.

Submodules are imported on demand (``server.app``, ``server.grpc_service``), so that
importing the package costs nothing and never loads the generated protobuf code.
"""
