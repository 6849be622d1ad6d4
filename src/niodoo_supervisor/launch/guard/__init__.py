"""What the supervisor hands vLLM to run inside its API server (never imported by the
supervisor's own process for its work): `niodoo_lora_guard`, the `lora.lora_name_field`
middleware, copied into the state folder and put on vLLM's PYTHONPATH by the launch plan.
"""
