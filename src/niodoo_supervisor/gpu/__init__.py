"""GPU memory as NVML reports it (`nvml`): the devices, their memory and the processes holding
it, behind a small interface the supervisor owns. The binding (`pynvml` from `nvidia-ml-py`,
the optional `gpu` extra) is imported only when NVML is opened.

May import: nothing of the project.
"""
