"""niodoo-supervisor: launch, health-check and supervise a vLLM server with LoRA adapters."""

__version__ = "0.1.0"
__all__ = ["__version__"]
