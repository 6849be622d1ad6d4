"""What the fake says and where vLLM 0.32 says it from (copied from the captured logs).

``Site`` constants give the logger, file and line of each real line; the functions build
the multi-line texts (banner, tracebacks). Paths inside tracebacks point into the fake
package, standing where vLLM's site-packages directory would be.
"""

from __future__ import annotations

import os
from pathlib import Path

from vllm._fake.logs import ROOT, Site

_STDLIB = Path(os.__file__).resolve().parent

_LAUNCHER = "vllm.entrypoints.launchers.launcher"
_ENTRY = "vllm.entrypoints.launchers.api_server.entry"
_CORE = "vllm.v1.engine.core"
_CLIENT = "vllm.v1.engine.core_client"
_EXECUTOR = "vllm.v1.executor.multiproc_executor"

SERVE_MODEL_FLAG = Site("vllm.utils.argparse_utils", "utils/argparse_utils.py", 293)
BANNER = Site(_LAUNCHER, "entrypoints/serve/utils/api_utils.py", 347)
NON_DEFAULT_ARGS = Site(
    "vllm.entrypoints.serve.utils.api_utils", "entrypoints/serve/utils/api_utils.py", 286
)
ARCHITECTURE = Site("vllm.config.model", "config/model.py", 733)
MAX_MODEL_LEN = Site("vllm.config.model", "config/model.py", 2152)
ENGINE_INIT = Site(_CORE, "v1/engine/core.py", 133)
LOAD_START = Site("vllm.v1.worker.cpu_model_runner", "v1/worker/cpu_model_runner.py", 68)
WEIGHTS_TOOK = Site(
    "vllm.model_executor.model_loader.default_loader",
    "model_executor/model_loader/default_loader.py",
    501,
)
KV_CACHE = Site("vllm.v1.core.kv_cache_utils", "v1/core/kv_cache_utils.py", 2327)
INIT_ENGINE_TOOK = Site(_CORE, "v1/engine/core.py", 402)
SUPPORTED_TASKS = Site(_ENTRY, "entrypoints/launchers/api_server/entry.py", 136)
SCALE_OUT = Site("vllm.entrypoints.scale_out.factories", "entrypoints/scale_out/factories.py", 89)
RUNTIME_LORA = Site(
    "vllm.entrypoints.serve.lora.api_router", "entrypoints/serve/lora/api_router.py", 33
)
LORA_LOADED = Site(
    "vllm.entrypoints.openai.models.serving", "entrypoints/openai/models/serving.py", 226
)
LORA_REMOVED = Site(
    "vllm.entrypoints.openai.models.serving", "entrypoints/openai/models/serving.py", 244
)
CHAT_TEMPLATE = Site("vllm.renderers.hf", "renderers/hf.py", 648)
STARTING = Site(_ENTRY, "entrypoints/launchers/api_server/entry.py", 140)
ROUTES = Site(_LAUNCHER, "entrypoints/launchers/launcher.py", 186)
ROUTE = Site(_LAUNCHER, "entrypoints/launchers/launcher.py", 195)
IGNORED_FIELDS = Site(
    "vllm.entrypoints.serve.engine.protocol", "entrypoints/serve/engine/protocol.py", 72
)
REMOVED_GUIDED = Site(
    "vllm.entrypoints.serve.engine.protocol", "entrypoints/serve/engine/protocol.py", 65
)
LORA_TOKENIZER = Site("vllm.v1.engine.input_processor", "v1/engine/input_processor.py", 289)
SHUTDOWN_TRIGGERED = Site(_LAUNCHER, "entrypoints/launchers/launcher.py", 254)
SHUTDOWN_STOPPING_CLIENT = Site(_LAUNCHER, "entrypoints/launchers/launcher.py", 270)
SHUTDOWN_CLIENT_STOPPED = Site(_LAUNCHER, "entrypoints/launchers/launcher.py", 279)
SHUTDOWN_SIGNAL_HTTP = Site(_LAUNCHER, "entrypoints/launchers/launcher.py", 282)
SHUTDOWN_FASTAPI = Site(_LAUNCHER, "entrypoints/launchers/launcher.py", 304)
MP_START = Site(_CLIENT, "v1/engine/core_client.py", 770)
MP_STOPPING = Site(_CLIENT, "v1/engine/core_client.py", 772)
MP_STOPPED = Site(_CLIENT, "v1/engine/core_client.py", 774)
MP_CLEANUP = Site(_CLIENT, "v1/engine/core_client.py", 775)
MP_COMPLETE = Site(_CLIENT, "v1/engine/core_client.py", 777)
MP_UNEXPECTED = Site(_CLIENT, "v1/engine/core_client.py", 817)
PM_SIGTERM = Site("vllm.v1.utils", "v1/utils.py", 628)
PM_FORCE_COUNT = Site("vllm.v1.utils", "v1/utils.py", 648)
PM_FORCE_ONE = Site("vllm.v1.utils", "v1/utils.py", 653)
FORCE_SUB_PROCESS = Site("vllm.utils.system_utils", "utils/system_utils.py", 225)
OUTPUT_HANDLER_FAILED = Site("vllm.v1.engine.async_llm", "v1/engine/async_llm.py", 906)
EC_SIGNAL = Site(_CORE, "v1/engine/core.py", 1454)
EC_START = Site(_CORE, "v1/engine/core.py", 1635)
EC_TEARDOWN = Site(_CORE, "v1/engine/core.py", 1666)
EC_EXIT_LOOP = Site(_CORE, "v1/engine/core.py", 1499)
EC_FATAL = Site(_CORE, "v1/engine/core.py", 1512)
EC_INVOKE_FAILED = Site(_CORE, "v1/engine/core.py", 1750)
HEADLESS_MP = Site("vllm.entrypoints.cli.serve", "entrypoints/cli/serve.py", 224)
HEADLESS_DP = Site("vllm.entrypoints.cli.serve", "entrypoints/cli/serve.py", 239)
EXECUTOR_WAIT = Site(_EXECUTOR, "v1/executor/multiproc_executor.py", 479)
WORKER_PARENT_EXIT = Site(_EXECUTOR, "v1/executor/multiproc_executor.py", 843)
WORKER_EXCEPTION = Site(_EXECUTOR, "v1/executor/multiproc_executor.py", 1063)

ROUTE_LINES = (
    ("/openapi.json", "HEAD, GET"),
    ("/docs", "HEAD, GET"),
    ("/load", "GET"),
    ("/version", "GET"),
    ("/health", "GET"),
    ("/metrics", "GET"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    ("/v1/models", "GET"),
    ("/ping", "GET"),
    ("/ping", "POST"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
)
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
LOGO = (
    "\n       █     █     █▄   ▄█\n"
    " ▄▄ ▄█ █     █     █ ▀▄▀ █  version %s\n"
    "  █▄█▀ █     █     █     █  model   %s\n"
    "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\n"
)
_RUNPY = (
    "Traceback (most recent call last):\n"
    '  File "<frozen runpy>", line 198, in _run_module_as_main\n'
    '  File "<frozen runpy>", line 88, in _run_code\n'
    '  File "{root}/entrypoints/openai/api_server.py", line 59, in <module>\n'
    "    main()\n"
    '  File "{root}/entrypoints/launchers/api_server/entry.py", line 232, in main\n'
    "    uvloop.run(run_server(args))\n"
)


def _f(text: str) -> str:
    return text.replace("{root}", str(ROOT)).replace("{stdlib}", str(_STDLIB))


def output_handler_failed() -> str:
    """The ERROR message the API server logs when its engine is gone (02 and 01 logs)."""
    return _f(
        "AsyncLLM output_handler failed.\n"
        "Traceback (most recent call last):\n"
        '  File "{root}/v1/engine/async_llm.py", line 849, in output_handler\n'
        "    outputs = await engine_core.get_output_async()\n"
        "              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "{root}/v1/engine/core_client.py", line 1235, in get_output_async\n'
        "    raise self._format_exception(outputs) from None\n"
        f"vllm.v1.engine.exceptions.EngineDeadError: {ENGINE_DEAD}"
    )


def engine_fatal_error(reason: str) -> str:
    """What the EngineCore logs (ERROR, core.py:1512) before it dies of an exception."""
    return _f(
        "EngineCore encountered a fatal error.\n"
        "Traceback (most recent call last):\n"
        '  File "{root}/v1/engine/core.py", line 1501, in run_engine_core\n'
        "    engine_core.run_busy_loop()\n"
        '  File "{root}/v1/engine/core.py", line 1531, in run_busy_loop\n'
        "    self._process_engine_step()\n"
        '  File "{root}/v1/engine/core.py", line 1568, in _process_engine_step\n'
        "    outputs, model_executed = self.step_fn()\n"
        "                              ^^^^^^^^^^^^^^\n"
        '  File "{root}/v1/executor/multiproc_executor.py", line 444, in get_response\n'
        "    raise RuntimeError(\n"
        f"RuntimeError: Worker failed with error '{reason}', please check the stack trace "
        "above for the root cause"
    )


def port_in_use(errno: int, strerror: str) -> str:
    """Raw traceback of 06-port-in-use.log."""
    return _f(
        _RUNPY + '  File "{stdlib}/asyncio/runners.py", line 118, in run\n'
        "    return self._loop.run_until_complete(task)\n"
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "{root}/entrypoints/launchers/api_server/entry.py", line 176, in run_server\n'
        "    listen_address, sock = setup_server(args, reuse_port=False)\n"
        "                           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "{root}/entrypoints/launchers/launcher.py", line 398, in setup_server\n'
        "    sock = create_server_socket(sock_addr, reuse_port=reuse_port)\n"
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "{root}/entrypoints/launchers/launcher.py", line 348, in create_server_socket\n'
        "    sock.bind(addr)\n"
        f"OSError: [Errno {errno}] {strerror}"
    )


def static_lora_failed(message: str) -> str:
    """Raw traceback ending 05-rank-too-big.log (init_static_loras raising)."""
    return _f(
        _RUNPY + '  File "{root}/entrypoints/launchers/api_server/entry.py", line 199, '
        "in run_server_worker\n"
        "    shutdown_task = await build_and_serve(\n"
        "                    ^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "{root}/entrypoints/launchers/api_server/entry.py", line 138, in build_and_serve\n'
        "    await init_app_state(engine_client, app.state, args, supported_tasks)\n"
        '  File "{root}/entrypoints/launchers/api_server/app_state.py", line 86, '
        "in init_app_state\n"
        "    await state.openai_serving_models.init_static_loras()\n"
        '  File "{root}/entrypoints/openai/models/serving.py", line 139, in init_static_loras\n'
        "    raise ValueError(load_result.error.message)\n"
        f"ValueError: {message}"
    )


def invalid_model(model: str) -> str:
    """Raw traceback of a --model that is neither a local directory nor reachable."""
    return _f(
        _RUNPY
        + '  File "{root}/entrypoints/launchers/api_server/entry.py", line 177, in run_server\n'
        "    await run_server_worker(listen_address, sock, args, **uvicorn_kwargs)\n"
        '  File "{root}/engine/arg_utils.py", line 1632, in create_model_config\n'
        "    return ModelConfig(\n"
        "           ^^^^^^^^^^^^\n"
        "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
        f"  Value error, Invalid repository ID or local directory specified: '{model}'.\n"
        "Please verify the following requirements:\n"
        "1. Provide a valid Hugging Face repository ID.\n"
        "2. Specify a local directory that contains a recognized configuration file.\n"
        "   - For Hugging Face models: ensure the presence of a 'config.json'.\n"
        "   - For Mistral models: ensure the presence of a 'params.json'.\n"
        f" [type=value_error, input_value=ArgsKwargs((), {{'model': '{model}', ...}}), "
        "input_type=ArgsKwargs]\n"
        "    For further information visit https://errors.pydantic.dev/2.12/v/value_error"
    )


def config_error(config: str, message: str) -> str:
    """Raw traceback of a config validation error (e.g. max_cpu_loras < max_loras)."""
    return _f(
        _RUNPY + '  File "{root}/engine/arg_utils.py", line 2011, in create_engine_config\n'
        f"    {config.lower()}_config = {config}(\n"
        f"pydantic_core._pydantic_core.ValidationError: 1 validation error for {config}\n"
        f"  Value error, {message} [type=value_error, input_value=ArgsKwargs(()), "
        "input_type=ArgsKwargs]\n"
        "    For further information visit https://errors.pydantic.dev/2.12/v/value_error"
    )


def interrupted_during_init() -> str:
    """Raw traceback when SIGTERM arrives before serving: vLLM's init handler raises
    ``KeyboardInterrupt("terminated")``, which leaves the interpreter."""
    return _f(
        _RUNPY + '  File "{root}/entrypoints/launchers/api_server/entry.py", line 165, '
        "in _interrupt_init\n"
        '    raise KeyboardInterrupt("terminated")\n'
        "KeyboardInterrupt: terminated"
    )


def crash(reason: str) -> str:
    """Raw traceback for the ``crash_after`` fault."""
    return _f(
        _RUNPY + '  File "{root}/entrypoints/launchers/api_server/entry.py", line 212, '
        "in run_server_worker\n"
        "    await shutdown_task\n"
        f"RuntimeError: {reason}"
    )


def worker_lora_error(error: str) -> tuple[str, str]:
    """Worker and EngineCore ERROR messages of a failed ``add_lora`` (05 log)."""
    worker_tb = _f(
        "Traceback (most recent call last):\n"
        '  File "{root}/v1/executor/multiproc_executor.py", line 1055, in _execute_worker_rpc\n'
        "    output = func(*args, **kwargs)\n"
        "             ^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "{root}/lora/worker_manager.py", line 127, in _load_adapter\n'
        "    peft_helper.validate_legal(self.lora_config)\n"
        '  File "{root}/lora/peft_helper.py", line 202, in validate_legal\n'
        "    raise ValueError(f\"{' '.join(error_msg)}\")\n"
        f"ValueError: {error}"
    )
    engine = _f(
        "Invocation of add_lora method failed\n"
        "Traceback (most recent call last):\n"
        '  File "{root}/v1/engine/core.py", line 1052, in add_lora\n'
        "    return self.model_executor.add_lora(lora_request)\n"
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "{root}/v1/executor/multiproc_executor.py", line 444, in get_response\n'
        "    raise RuntimeError(\n"
        f"RuntimeError: Worker failed with error '{error}', please check the stack trace "
        "above for the root cause"
    )
    return "WorkerProc hit an exception.\n" + worker_tb, engine


def add_lora_failed(error: str) -> str:
    """The message vLLM returns (HTTP 500) or raises (static adapter) for it."""
    return (
        f"Call to add_lora method failed: Worker failed with error '{error}', "
        "please check the stack trace above for the root cause"
    )


def engine_init_failed(failed: dict[str, int]) -> str:
    """Raw traceback when the engine process dies before it is ready."""
    return _f(
        _RUNPY + '  File "{root}/v1/engine/utils.py", line 1431, in wait_for_engine_startup\n'
        "    raise RuntimeError(\n"
        "RuntimeError: Engine core initialization failed. See root cause above. "
        f"Failed core proc(s): {failed}"
    )
