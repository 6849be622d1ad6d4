"""A fake vLLM 0.32.0 for the supervisor's fast fault-injection tests.

Put the directory holding this package first on the child's PYTHONPATH and launch it
exactly like the real server::

    python -m vllm.entrypoints.openai.api_server --model M --host H --port P ...

Standard library only, so it runs under any Python >= 3.10 without installing vLLM.
The behaviour and fault switches are described in ``vllm._fake``.
"""

__version__ = "0.32.0"
