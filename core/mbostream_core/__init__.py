"""mbostream-core: what the mbostream server and its clients share, usable alone.

The native book engine (``_engine``), the DBN record layouts and constants (``records``), DBN file
decoding (``dbn``), the book market and its views (``market``), integer prices (``prices``), the
JSON book (``render``), checked numbers for command lines (``argtypes``), the core errors
(``errors``), the deterministic synthetic feed and its cached sample (``synth``) and the generated
protobuf/gRPC code of the API (``v1``). It depends on no part of the
server: ``pip install`` of a client pulls this, never the server's database, edge or metrics stacks.
"""
