"""Generated protobuf modules of the KServe V2 protocol (``inference``).

DO NOT EDIT: made by protos/gen_protos.py from protos/*.proto; a test fails when
regenerating would change them.

    from steadyserve._proto import grpc_predict_v2_pb2 as pb

Importing these modules registers ``inference.*`` in protobuf's default
descriptor pool, as tritonclient's generated modules do too: the two cannot be
imported into the same process.
"""

# The tools that made these files. The protobuf runtime must be at least
# PROTOBUF_GENCODE_VERSION.
GRPCIO_TOOLS_VERSION = "1.81.1"
PROTOBUF_GENCODE_VERSION = "6.33.5"
