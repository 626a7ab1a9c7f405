"""reuse_host_memory: glibc keeps large freed blocks in the heap instead of unmapping them."""

import subprocess
import sys

import pytest

from galda.host_memory import _glibc
from tests.conftest import REPO

# In a fresh interpreter: allocate and free a 64 MiB tensor, then report how many bytes glibc holds
# in separate mmap'ed blocks (mallinfo2().hblkhd, glibc >= 2.33) while a second one is alive.
PROBE = """
import ctypes, sys, torch
from galda.host_memory import reuse_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
took = reuse_freed_memory() if sys.argv[1] == "reuse" else None
x = torch.empty(16 << 20)  # 64 MiB of float32
del x
y = torch.empty(16 << 20)
print(took, libc.mallinfo2().hblkhd)
"""


def _probe(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": ""},
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_large_blocks_come_from_the_heap_with_reuse_and_from_fresh_mappings_without():
    took, mapped = _probe("reuse")
    assert took == str(1 << 30)
    assert mapped < 64 << 20  # the 64 MiB tensor lives in the heap, reusable by the next step
    took, mapped = _probe("system")
    assert took == "None" and mapped >= 64 << 20  # glibc's default: a fresh mapping each time


def test_train_applies_the_setting_and_preflight_refuses_a_non_boolean(
    compose_cfg, sim_data_dir, monkeypatch
):
    import galda.train
    from galda.errors import GaldaError
    from galda.preflight import preflight_config

    calls: list[bool] = []
    monkeypatch.setattr(galda.train, "configure_host_memory", calls.append)
    for value in (True, False):
        cfg = compose_cfg(
            "data=tiny",
            f"paths.data_dir={sim_data_dir}",
            "model=tiny",
            "logger=none",
            "trainer.fast_dev_run=true",
            f"reuse_host_memory={str(value).lower()}",
            run_dir=sim_data_dir / f"reuse-{value}",
        )
        galda.train.train(cfg)
    assert calls == [True, False]
    cfg = compose_cfg("data=tiny", f"paths.data_dir={sim_data_dir}", "reuse_host_memory=often")
    with pytest.raises(GaldaError, match="reuse_host_memory=often: must be true or false"):
        preflight_config(cfg)
