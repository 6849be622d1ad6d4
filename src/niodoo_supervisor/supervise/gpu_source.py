"""NVML as the supervisor's event loop asks it: every call in a thread of its own, with a
deadline. NVML calls can block (a hung driver, a GPU falling off the bus); the loop must go
on answering signals and probing vLLM meanwhile, and an exiting supervisor must not wait for
them, so the threads are daemon threads rather than asyncio's executor's."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from niodoo_supervisor.gpu.nvml import GpuDevice, GpuReader, GpuUnavailable, open_nvml

__all__ = ["NVML_CALL_TIMEOUT", "GpuSource", "ThreadedNvml"]

T = TypeVar("T")

# A healthy NVML answers in milliseconds; nvmlInit takes up to a few seconds on a cold driver.
NVML_CALL_TIMEOUT = 15.0


class GpuSource(Protocol):
    """What `gpu_memory` asks of NVML; every call raises GpuUnavailable when it cannot."""

    async def open(self) -> None: ...

    async def devices(self, visible: str | None) -> list[GpuDevice]: ...

    def close(self) -> None: ...


class ThreadedNvml:
    """`GpuSource` over `open_nvml`'s reader, one call at a time, each within `timeout`."""

    def __init__(
        self, opener: Callable[[], GpuReader] = open_nvml, timeout: float = NVML_CALL_TIMEOUT
    ) -> None:
        self.opener = opener
        self.timeout = timeout
        self.reader: GpuReader | None = None
        self._busy = False  # a call still under way (hung): no second one joins it

    async def open(self) -> None:
        self.reader = await self._call(self.opener)

    async def devices(self, visible: str | None) -> list[GpuDevice]:
        reader = self.reader
        if reader is None:
            raise GpuUnavailable("NVML: not opened (a bug: please report it)")
        return await self._call(lambda: reader.devices(visible))

    def close(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:  # nvmlShutdown may block like any other call
            threading.Thread(target=reader.close, name="niodoo-nvml-close", daemon=True).start()

    async def _call(self, work: Callable[[], T]) -> T:
        if self._busy:
            raise GpuUnavailable(
                f"NVML: an earlier call has not returned after {self.timeout:g} s (a hung "
                "driver or GPU): check `nvidia-smi` and dmesg"
            )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def deliver(value: T | None, error: BaseException | None) -> None:
            if done.done():
                return  # given up on (the deadline passed)
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(value)  # type: ignore[arg-type]

        def run() -> None:
            value: T | None = None
            error: BaseException | None = None
            try:
                value = work()
            except GpuUnavailable as exc:
                error = exc
            except Exception as exc:  # the binding's own bug or a driver's oddity
                error = GpuUnavailable(f"NVML: the binding failed: {type(exc).__name__}: {exc}")
            finally:
                self._busy = False
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(deliver, value, error)

        self._busy = True
        threading.Thread(target=run, name="niodoo-nvml", daemon=True).start()
        try:
            return await asyncio.wait_for(asyncio.shield(done), self.timeout)
        except asyncio.TimeoutError:
            done.cancel()  # what the thread delivers later is dropped, not left unretrieved
            raise GpuUnavailable(
                f"NVML: no answer within {self.timeout:g} s (a hung driver or GPU): check "
                "`nvidia-smi` and dmesg"
            ) from None
