"""A real line of every built-in rule (the unit tests check each rule against it; the fault
and end-to-end tiers send the texts of the fatal and check_now ones as request field names,
which must never act)."""

from __future__ import annotations

from typing import Any

from niodoo_supervisor.logs.builtin_rules import BUILTIN_RULES
from niodoo_supervisor.logs.rule_types import Action

H = "(APIServer pid=1) INFO 11-24 00:00:00 [x.py:1] "
E = "(EngineCore_DP0 pid=7) ERROR 08-01 10:00:00 [core.py:1] "
SAMPLES: list[tuple[str, str, dict[str, Any]]] = [
    (H + "The following fields were present in the request but ignored: {'lora_name', 'x'}",
     "ignored_request_fields", {"fields": ["lora_name", "x"]}),
    (H + "Error with model error=ErrorInfo(message='The model `nope` does not exist. Valid "
     "aliases: tiny.', type='NotFoundError', param='model', code=404)",
     "unknown_model", {"model": "nope"}),
    (H + "Request contains the removed guided-decoding field(s) ['guided_json'], which are "
     "ignored; output will NOT be constrained. Use `structured_outputs` (or `response_format`) "
     "instead; see docs/features/structured_outputs.md.",
     "removed_guided_fields", {"fields": ["guided_json"]}),
    (H + "lora_name guard: routed to adapter 'alpha'", "lora_name_routed", {"adapter": "alpha"}),
    (H + "lora_name guard: rejected (unknown_adapter) lora_name='zeta'", "lora_name_rejected",
     {"reason": "unknown_adapter"}),
    (E + "EngineCore encountered a fatal error.", "engine_fatal_error", {}),
    ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
     "engine_dead", {}),
    (H + "Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.",
     "engine_core_died", {"engine": "EngineCore_DP0"}),
    (E + "Worker proc VllmWorker-0 died unexpectedly (exit code: -9), shutting down executor.",
     "worker_died", {"worker": "VllmWorker-0", "exit_code": -9}),
    (E + "EngineCore failed to start.", "engine_start_failed", {}),
    ("RuntimeError: Engine core initialization failed. See root cause above. Failed core "
     "proc(s): {'EngineCore_DP0': 1}", "engine_start_failed", {}),
    ("RuntimeError: Unsupported CPU attention configuration: head_dim=16",
     "cpu_attention_unsupported", {"config": "head_dim=16"}),
    ("vllm serve: error: argument --max-lora-rank: invalid choice: 7 (choose from 1, 8, 16)",
     "cli_argument_error",
     {"prog": "vllm serve", "reason": "argument --max-lora-rank: invalid choice: 7 (choose "
      "from 1, 8, 16)"}),
    ("ValueError: LoRA rank 32 is greater than max_lora_rank 16.", "lora_rank_too_big",
     {"rank": 32, "max_lora_rank": 16}),
    ("ValueError: max_cpu_loras (1) must be >= max_loras (2).", "lora_config_invalid",
     {"max_cpu_loras": 1, "max_loras": 2}),
    ("OSError: [Errno 98] Address already in use", "address_in_use", {"errno": 98}),
    ("ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): "
     "address already in use", "address_in_use", {"errno": 98}),
    ("ValueError: Invalid repository ID or local directory specified: 'models/nope'.",
     "model_path_invalid", {"path": "models/nope"}),
    ("OSError: models/x does not appear to have a file named config.json. Checkout "
     "'https://huggingface.co/models/x/tree/None' for available files.",
     "model_path_invalid", {"path": "models/x", "file": "config.json"}),
    ("OSError: nope is not a local folder and is not a valid model identifier listed on "
     "'https://huggingface.co/models'", "model_path_invalid", {"path": "nope"}),
    ("FileNotFoundError: [Errno 2] No such file or directory: 'models/a/adapter_config.json'",
     "file_not_found", {"path": "models/a/adapter_config.json"}),
    ("vllm.exceptions.LoRAAdapterNotFoundError: Loading lora a failed: No adapter found for "
     "/srv/a", "adapter_not_found", {"adapter": "a", "path": "/srv/a"}),
    ("ValueError: Quantization method specified in the model config (awq) does not match the "
     "quantization method specified in the `quantization` argument (gptq).",
     "quantization_mismatch", {"checkpoint": "awq", "argument": "gptq"}),
    ("ValueError: No available memory for the cache blocks. Try increasing "
     "`gpu_memory_utilization` when initializing the engine.", "no_kv_cache_memory", {}),
    ("ValueError: To serve at least one request with the model's max seq len (32768), (1.75 "
     "GiB KV cache is needed, which is larger than the available KV cache memory (0.86 GiB). "
     "Based on the available memory, the estimated maximum model length is 16000. Try "
     "increasing `gpu_memory_utilization`", "kv_cache_too_small",
     {"max_model_len": 32768, "estimated_max_model_len": 16000}),
    ("ValueError: The model's max seq len (4096) is larger than the maximum number of tokens "
     "that can be stored in KV cache (2000). Try increasing `gpu_memory_utilization` or "
     "decreasing `max_model_len` when initializing the engine.", "kv_cache_too_small",
     {"max_model_len": 4096}),
    ("ValueError: Free memory on device cuda:0 (10.5/79.19 GiB) on startup is less than "
     "desired GPU memory utilization (0.9, 71.27 GiB). Decrease GPU memory utilization or "
     "reduce GPU memory used by other processes.", "gpu_memory_busy",
     {"device": "cuda:0", "free": 10.5, "total": 79.19}),
    ("ValueError: Free memory on device (10.5/79.19 GiB) on startup is less than desired GPU "
     "memory utilization (0.9, 71.27 GiB).", "gpu_memory_busy", {"free": 10.5, "total": 79.19}),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
     "cuda_out_of_memory", {}),
    (H + "Loaded new LoRA adapter: name 'a', path '/srv/a'", "lora_loaded",
     {"adapter": "a", "path": "/srv/a", "phase": "adapter_loaded"}),
    (H + "Removed LoRA adapter: name '7'", "lora_removed", {"adapter": "7"}),
    (E + "Invocation of add_lora method failed", "lora_load_failed", {}),
    ("INFO 07-24 22:45:01 [api_server.py:1] vLLM API server version 0.10.0", "version",
     {"version": "0.10.0", "phase": "starting"}),
    (H + "vLLM server version 0.32.0, serving model tiny", "version",
     {"version": "0.32.0", "phase": "starting"}),
    (E + "Initializing a V1 LLM engine (v0.10.2) with config: model='m'", "engine_init",
     {"version": "0.10.2", "phase": "engine_init"}),
    ("(Worker_TP0 pid=9) INFO 11-24 00:00:00 [gpu_model_runner.py:1] Starting to load model "
     "Qwen/Qwen2.5-7B-Instruct-AWQ...", "weights_loading",
     {"model": "Qwen/Qwen2.5-7B-Instruct-AWQ", "phase": "loading_weights"}),
    # tqdm's bar, unprefixed (0.31+) or behind the process prefix (0.10.2-0.30)
    ("\rLoading safetensors checkpoint shards:  50% Completed | 2/4 [00:03<00:03,  1.52s/it]",
     "weight_shards", {"done": 2, "total": 4, "phase": "loading_weights"}),
    ("(Worker_TP0 pid=9) \rLoading pt checkpoint shards: 100% Completed | 3/3 [00:09<00:00, "
     "3.01s/it]", "weight_shards", {"done": 3, "total": 3, "phase": "loading_weights"}),
    ("(Worker_TP0 pid=9) INFO 11-24 00:00:00 [default_loader.py:1] Loading weights took 12.35 "
     "seconds", "weights_loaded", {"seconds": 12.35, "phase": "weights_loaded"}),
    ("(Worker_TP0 pid=9) INFO 11-24 00:00:00 [monitor.py:1] torch.compile took 10.52 s in total",
     "torch_compiled", {"seconds": 10.52, "phase": "compiled"}),
    ("(Worker_TP0 pid=9) INFO 11-24 00:00:00 [monitor.py:1] [backbone] torch.compile and "
     "initial profiling/warmup run together took 31.07 s in total", "torch_compiled",
     {"seconds": 31.07, "phase": "compiled"}),
    (E + "GPU KV cache size: 123,456 tokens", "kv_cache_sized",
     {"device": "GPU", "tokens": 123456, "phase": "kv_cache"}),
    ("(Worker_TP0 pid=9) INFO 11-24 00:00:00 [gpu_model_runner.py:1] Graph capturing finished "
     "in 5 secs, took 0.45 GiB", "graphs_captured",
     {"seconds": 5, "gib": 0.45, "phase": "graphs_captured"}),
    (E + "init engine (profile, create kv cache, warmup model) took 41.20 seconds",
     "engine_ready", {"seconds": 41.2, "phase": "engine_ready"}),
    ("INFO 07-24 22:45:01 [api_server.py:1] Starting vLLM API server 0 on http://0.0.0.0:8000",
     "listening", {"address": "http://0.0.0.0:8000", "phase": "listening"}),
    (H + "Available routes are:", "routes", {"phase": "routes"}),
    ("INFO:     Application startup complete.", "startup_complete", {"phase": "startup_complete"}),
]  # fmt: skip


# The text of each fatal and check_now sample without a log header: what a client would put
# in a field name to fake the event.
SPOOFS: list[str] = ["LoRA rank 99 is greater than max_lora_rank 16"] + [
    line.split("] ", 1)[1] if line.startswith("(") else line
    for line, rule, _ in SAMPLES
    if next(r for r in BUILTIN_RULES if r.name == rule).action in (Action.FATAL, Action.CHECK_NOW)
]
