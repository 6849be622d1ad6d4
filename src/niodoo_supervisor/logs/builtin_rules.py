"""The built-in rule table: known vLLM log lines (`BUILTIN_RULES`) and the startup phases
in the order a healthy start logs them (`PHASES`). Data only; `rules` turns it into events.

Patterns are RE2 syntax (linear time, see `rules`) and match at the start of vLLM's message
or right after a leading exception type (`trust.trusted_starts`), never further into a
line, where vLLM may quote a client. Every rule has literal `anchors`, one of which any line
it matches contains: the scanner finds them all in one pass over each chunk and runs a
rule's regex only on the rare lines that hold one.
"""

from __future__ import annotations

from niodoo_supervisor.logs.rule_types import Action, Rule, Severity

__all__ = [
    "BUILTIN_RULES",
    "IGNORED_FIELDS_RULE",
    "LINE_CUT_RULE",
    "LORA_GUARD_RULES",
    "PHASES",
    "SERVING_PHASES",
    "UNKNOWN_MODEL_RULE",
]


S, A = Severity, Action
_GUIDED_HINT = (
    "guided_* fields were removed from vLLM and are ignored, so output is NOT "
    "constrained: send `structured_outputs` (or `response_format`) instead."
)
_ENGINE_DEAD_HINT = (
    "vLLM's engine process died; /health answers 503 and vLLM exits soon (with code 0). "
    "The supervisor restarts it; the root cause is in the lines before."
)
_PATH_HINT = (
    "A model or adapter path does not exist or is not a model directory: check "
    "model/adapters paths in the config (no hub download happens when HF_HUB_OFFLINE=1)."
)

# fmt: off
# Phases in the order a healthy start logs them (for STATUS= and tests).
PHASES = ("starting", "engine_init", "loading_weights", "weights_loaded", "compiled",
          "kv_cache", "graphs_captured", "engine_ready", "adapter_loaded", "listening", "routes",
          "startup_complete")
# vLLM logs one of these before its HTTP server takes the first request (the static
# adapters are loaded before): from then on a client can make vLLM write text.
SERVING_PHASES = frozenset(("listening", "routes", "startup_complete"))
IGNORED_FIELDS_RULE = "ignored_request_fields"
# The lora_name guard's lines (`trust.LineKind.LORA_GUARD`: they quote a client's names).
LORA_GUARD_RULES = frozenset(("lora_name_routed", "lora_name_rejected"))
UNKNOWN_MODEL_RULE = "unknown_model"
LINE_CUT_RULE = "line_cut"  # the event of a line cut before matching (`rules`)

BUILTIN_RULES: tuple[Rule, ...] = (
    # --- requests ---------------------------------------------------------------------
    Rule("ignored_request_fields",
         r"The following fields were present in the request but ignored: (?P<fields>.*)",
         S.WARNING, A.LOG,
         "Clients send request fields this vLLM does not know; they are dropped silently.",
         ("The following fields were present",)),
    # 0.32: vLLM logs the 404 it answers (older versions log only the access line). The name
    # is the client's, repr-quoted (no newline survives); a backtick in it cannot end it
    # early (the last "` does not exist." is vLLM's), and on a line cut short the name runs
    # to the cut. `trust` lets this line feed this rule only.
    Rule("unknown_model",
         r"Error with model error=ErrorInfo\(message=['\"]The model `(?:(?P<model>.*)` does not "
         r"exist\.|(?P<model2>.*))",
         S.WARNING, A.LOG,
         "Clients ask for models this vLLM does not serve; each got HTTP 404.",
         ("Error with model error=ErrorInfo(",)),
    Rule("removed_guided_fields",
         r"Request contains the removed guided-decoding field\(s\) (?P<fields>\[.*?\])",
         S.WARNING, A.LOG, _GUIDED_HINT, ("Request contains the removed guided-decoding",)),
    # The lora_name guard (lora.lora_name_field: reject|route) inside vLLM. Only the parts
    # before a client's text are captured: the adapter is one the config names.
    Rule("lora_name_routed", r"lora_name guard: routed to adapter '(?P<adapter>[^'\n]{1,64})",
         S.INFO, A.LOG,
         "A client sent `lora_name` with the base model; the guard served the adapter it "
         "names (lora.lora_name_field: route). Clients should send the adapter as `model`.",
         ("lora_name guard: routed",)),
    Rule("lora_name_rejected", r"lora_name guard: rejected \((?P<reason>\w{1,32})\)",
         S.WARNING, A.LOG,
         "A client sent `lora_name`; the guard answered HTTP 400 instead of letting the base "
         "model answer (reject mode, or in route mode an unknown adapter or a `model` naming "
         "another; 413 for a body over 16 MiB): the client must send the adapter's name as "
         "`model`.",
         ("lora_name guard: rejected",)),
    # --- engine death -------------------------------------------------------------------
    Rule("engine_fatal_error", r"EngineCore encountered a fatal error", S.CRITICAL,
         A.CHECK_NOW, _ENGINE_DEAD_HINT, ("EngineCore encountered a fatal error",)),
    Rule("engine_dead", r"(?:\w+\.)*EngineDeadError\b", S.CRITICAL, A.CHECK_NOW, _ENGINE_DEAD_HINT,
         ("EngineDeadError",)),
    Rule("engine_core_died",  # 0.10.2-0.26 and 0.27+ wording
         r"Engine core proc (?P<engine>\S+) died unexpectedly"
         r"|(?:\[shutdown\] )?(?:MPClient: )?engine core exited unexpectedly",
         S.CRITICAL, A.CHECK_NOW, _ENGINE_DEAD_HINT,
         ("Engine core proc ", "engine core exited unexpectedly")),
    Rule("worker_died",
         r"(?:Worker proc (?P<worker>\S+)|RayWorkerProc rank=(?P<rank>\d+)) died "
         r"unexpectedly(?: \(exit code: (?P<exit_code>-?\d+)\))?",
         S.CRITICAL, A.CHECK_NOW,
         "A vLLM worker process died (killed, OOM-killed, or crashed in a kernel); the "
         "engine shuts down. Look for the OOM killer in the journal or dmesg.",
         ("Worker proc ", "RayWorkerProc rank=")),
    Rule("engine_start_failed",
         r"EngineCore failed to start|Engine core initialization failed"
         r"|WorkerProc (?:failed to start|initialization failed)",
         S.ERROR, A.CHECK_NOW,
         "The engine failed while starting; the cause is logged above (memory, rank, "
         "quantization, path). Retried with backoff unless a fatal cause was seen.",
         ("EngineCore failed to start", "Engine core initialization failed", "WorkerProc ")),
    Rule("cpu_attention_unsupported",
         r"Unsupported CPU attention configuration:? ?(?P<config>.*)", S.ERROR, A.LOG,
         "The CPU build cannot run this model's attention shape (head_dim 16 fails, 64 "
         "works); the engine dies at the first request.",
         ("CPU attention configuration",)),
    # --- start failures retrying cannot fix -----------------------------------------------
    Rule("cli_argument_error",
         r"(?P<prog>[^:]+): error: (?P<reason>(?:unrecognized arguments|argument |the "
         r"following arguments are required|invalid choice).*)",
         S.CRITICAL, A.FATAL,
         "vLLM refused its command line (exit code 2): a flag is unknown to this vLLM "
         "version or has a bad value. Fix the config or install the vLLM it was written for.",
         (": error: ",)),
    Rule("lora_rank_too_big",
         # vLLM's own wrappers of the worker's error (05-rank-too-big.log) name it too.
         r"(?:Call to add_lora method failed: )?(?:Worker failed with error ')?"
         r"LoRA rank (?P<rank>\d+) is greater than max_lora_rank (?P<max_lora_rank>\d+)",
         S.CRITICAL, A.FATAL,
         "An adapter's rank (`r` in adapter_config.json) exceeds --max-lora-rank: raise "
         "the server's max_lora_rank to at least that rank or use a smaller adapter.",
         ("LoRA rank ",)),
    Rule("lora_config_invalid",
         r"max_cpu_loras \((?P<max_cpu_loras>\d+)\) must be >= max_loras \((?P<max_loras>\d+)\)",
         S.CRITICAL, A.FATAL, "Set max_cpu_loras to at least max_loras (or leave it unset).",
         ("max_cpu_loras (",)),
    Rule("address_in_use", r"\[Errno (?P<errno>98)\] (?:.*: )?[Aa]ddress already in use",
         S.CRITICAL, A.FATAL,
         "The port is taken, often by a leftover vLLM of an earlier run: find it with "
         "`ss -ltnp` and stop it, or change the port.",
         ("Errno 98]",)),
    Rule("model_path_invalid",
         r"Invalid repository ID or local directory specified: '(?P<path>[^']*)'"
         r"|(?P<path2>\S+) is not a local folder and is not a valid model identifier"
         r"|(?P<path3>\S+) does not appear to have a file named (?P<file>[^\s.]+(?:\.\w+)?)"
         r"|Repo id must (?:be in the form|use alphanumeric)|Repository Not Found for url",
         S.CRITICAL, A.FATAL, _PATH_HINT,
         ("Invalid repository ID", "not a local folder", "not appear to have a file named",
          "Repo id must", "Repository Not Found")),
    Rule("file_not_found",
         r"(?:\w+\.)*(?:FileNotFoundError|OSError|ValueError): \[Errno 2\] No such file or "
         r"directory: '(?P<path>[^']*)'",
         S.CRITICAL, A.FATAL, _PATH_HINT, ("No such file or directory",)),
    Rule("adapter_not_found",
         r"Loading lora (?P<adapter>\S+) failed: No adapter found for (?P<path>\S+)",
         S.ERROR, A.FATAL, _PATH_HINT, ("Loading lora ",)),
    Rule("quantization_mismatch",
         r"Quantization method specified in the model config \((?P<checkpoint>[^)]*)\) "
         r"does not match the quantization method specified in the `quantization` "
         r"argument \((?P<argument>[^)]*)\)",
         S.CRITICAL, A.FATAL,
         "The checkpoint's quantization differs from --quantization: remove the setting "
         "(vLLM reads it from the checkpoint) or set the checkpoint's method.",
         ("match the quantization method",)),
    # --- memory -------------------------------------------------------------------------
    Rule("no_kv_cache_memory", r"No available memory for the cache blocks", S.CRITICAL,
         A.FATAL,
         "The weights use all memory vLLM may take: raise gpu_memory_utilization, use a "
         "smaller or quantized model, or more GPUs (tensor parallel).",
         ("No available memory for the cache blocks",)),
    Rule("kv_cache_too_small",
         r"(?:To serve at least one request with the model's|The model's) max seq len "
         r"\((?P<max_model_len>\d+)\).*?(?:larger than the available KV cache "
         r"memory|larger than the maximum number of tokens that can be stored in KV cache)"
         r"(?:.*?estimated maximum model length is (?P<estimated_max_model_len>\d+))?",
         S.CRITICAL, A.FATAL,
         "max_model_len does not fit in the KV cache: lower max_model_len (to the "
         "estimate, if given) or raise gpu_memory_utilization.",
         ("max seq len (",)),
    Rule("gpu_memory_busy",
         r"Free memory on device (?P<device>\S+)? ?\((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\)"
         r".*?less than desired GPU memory utilization",
         S.ERROR, A.LOG,
         "Another process holds GPU memory (a leftover vLLM worker?): check nvidia-smi. "
         "Retried with backoff.",
         ("memory on device",)),
    Rule("cuda_out_of_memory", r"CUDA out of memory", S.ERROR, A.LOG,
         "The GPU ran out of memory: lower gpu_memory_utilization, max_num_seqs or "
         "max_model_len.",
         ("CUDA out of memory",)),
    # --- LoRA lifecycle -----------------------------------------------------------------
    Rule("lora_loaded", r"Loaded new LoRA adapter: name '(?P<adapter>[^']*)', "
         r"path '(?P<path>[^']*)'", S.INFO, A.PHASE, "", ("Loaded new LoRA adapter",),
         "adapter_loaded"),
    Rule("lora_removed", r"Removed LoRA adapter: name '(?P<adapter>[^']*)'", S.INFO, A.LOG,
         "", ("Removed LoRA adapter",)),
    Rule("lora_load_failed", r"Invocation of add_lora method failed|Call to add_lora method "
         r"failed", S.ERROR, A.LOG,
         "vLLM could not load a LoRA adapter; the reason follows in the same record.",
         ("Invocation of add_lora method failed", "Call to add_lora method failed")),
    # --- startup phases -----------------------------------------------------------------
    # the banner's last line: " ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.32.0"
    Rule("version", r"[ ▀▄█]*version (?P<version>\d+\.\d+[\w.+-]*)"
         r"|vLLM (?:API )?server version (?P<version2>\d+\.\d+[\w.+-]*)",
         S.INFO, A.PHASE, "", ("version ",), "starting"),
    Rule("engine_init", r"Initializing an? (?:V1 )?LLM engine \(v(?P<version>[^)]+)\)",
         S.INFO, A.PHASE, "", ("LLM engine (v",), "engine_init"),
    Rule("weights_loading", r"Starting to load model (?P<model>.+?)(?:\.\.\.)?$", S.INFO,
         A.PHASE, "", ("Starting to load model",), "loading_weights"),
    # tqdm's bar of the weight loaders (its format ends with "\n", so every update is a line
    # of its own, starting with the "\r" tqdm writes first): one per shard file loaded.
    Rule("weight_shards",
         r"\r?(?:Multi-thread l|L)oading (?:\w+ )?(?:checkpoint )?shards(?: \(eager\))?: +"
         r"\d{1,3}% Completed \| (?P<done>\d{1,9})/(?P<total>\d{1,9}) ",
         S.INFO, A.PHASE, "", ("% Completed | ",), "loading_weights"),
    Rule("weights_loaded", r"Loading weights took (?P<seconds>[\d.]+) seconds", S.INFO,
         A.PHASE, "", ("Loading weights took",), "weights_loaded"),
    # GPU builds: torch.compile runs in the memory profiling, before the KV cache is sized
    # (optionally tagged "[backbone] ").
    Rule("torch_compiled",
         r"(?:\[[\w.-]{1,64}\] )?torch\.compile (?:and initial profiling/warmup run together )?"
         r"took (?P<seconds>[\d.]+) s in total",
         S.INFO, A.PHASE, "", ("torch.compile ",), "compiled"),
    Rule("kv_cache_sized", r"(?P<device>\w+ )?KV cache size: (?P<tokens>[\d,]+) tokens",
         S.INFO, A.PHASE, "", ("KV cache size: ",), "kv_cache"),
    # GPU builds: CUDA graphs are captured after the KV cache is allocated.
    Rule("graphs_captured",
         r"Graph capturing finished in (?P<seconds>[\d.]+) secs, took (?P<gib>-?[\d.]+) GiB",
         S.INFO, A.PHASE, "", ("Graph capturing finished",), "graphs_captured"),
    Rule("engine_ready", r"init engine \(profile, create kv cache, warmup model\) took "
         r"(?P<seconds>[\d.]+)", S.INFO, A.PHASE, "", ("engine (profile",),
         "engine_ready"),
    Rule("listening", r"Starting vLLM (?:API )?server(?: \d+)? on (?P<address>\S+)", S.INFO,
         A.PHASE, "", ("Starting vLLM server on", "Starting vLLM API server"), "listening"),
    Rule("routes", r"Available routes are:", S.INFO, A.PHASE, "",
         ("Available routes are:",), "routes"),
    Rule("startup_complete", r"Application startup complete\.", S.INFO, A.PHASE, "",
         ("Application startup complete",), "startup_complete"),
)
# fmt: on
