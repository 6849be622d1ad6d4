"""The fake vLLM 0.32.0 server behind ``python -m vllm.entrypoints.openai.api_server``.

Process tree, as vLLM 0.32 builds it (fork start method, see ``03-orphans.txt``)::

    APIServer (the launched process; HTTP, logs with "(APIServer pid=N)")
      └─ VLLM::EngineCore (forked after the port is bound; "(EngineCore pid=M)")
           └─ VLLM::Worker (forked by the engine; "(Worker pid=W)")

The engine and worker stay in the API server's process group, survive a SIGKILL of the
API server (and keep its inherited listening socket open, as forked vLLM children do),
and end on SIGTERM unless ``stubborn_children`` is set.

Fault switches come from ``FAKE_VLLM_FAULTS``: comma-separated ``name`` or ``name=value``
(seconds as floats). Times marked "after ready" count from ``Application startup
complete.``. See ``faults.py`` for the list and exact semantics. ``FAKE_VLLM_STATE_FILE``
names a JSON file the API server writes (atomically) with its pids once the engine and
worker exist, and again with ``"ready": true`` once it serves.

Modules: ``launch`` (``main``), ``cli`` (argparse), ``faults``, ``logs`` (logging as vLLM
configures it), ``texts`` (canned lines and tracebacks), ``engine`` (the child processes),
``engine_client`` (the API server's side of them), ``models`` and ``endpoints`` (HTTP),
``server`` (the API server's start-up, main loop and exits).
"""
