"""Tools room: the benchmarks, the audit and the browser driver, apart from the serving path.

Each module backs a command: ``mbostream bench book|e2e|web|soak|costs|cluster``
(:mod:`.bench_book`, :mod:`.bench_e2e`, :mod:`.bench_web` driving a real browser through
:mod:`.browser`, :mod:`.bench_soak`, :mod:`.bench_costs`, :mod:`.bench_cluster`; in-process bus
figures: ``python -m mbostream.tools.bench_bus``; those that start ``mbostream serve`` and read its CPU and memory do it through
:mod:`.bench_server`), ``mbostream storage bench`` (:mod:`.bench_storage`, :mod:`.bench_storage_server`) and
``mbostream audit`` (:mod:`.audit`). The command-line modules (``mbostream.cli``,
``mbostream.storage.cli``) register their flags from :mod:`.bench_cli` and :mod:`.bench_storage_cli`,
which import a benchmark only when it runs; nothing that serves (the server, hub, replay, feed,
storage, edge) ever imports them.
"""
