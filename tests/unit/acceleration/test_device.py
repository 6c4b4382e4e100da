"""The hardware description and what it refuses before any download (no GPU needed)."""

from __future__ import annotations

import pytest
from finetune_api.spec import Method, Quantization
from finetune_trainer.acceleration import DeviceInfo, check_quantization
from finetune_trainer.errors import EXIT_INVALID_INPUT, UnsupportedHardware

pytestmark = pytest.mark.unit

CPU = DeviceInfo()
GPU_WITHOUT_BNB = DeviceInfo("cuda", "H200", 141 * 2**30, True, (9, 0), bitsandbytes=False)


def test_this_machine_is_described_without_a_gpu() -> None:
    pytest.importorskip("torch")
    device = DeviceInfo.detect()
    assert device.cuda == (device.type == "cuda")
    if not device.cuda:
        assert device.total_memory_bytes == 0 and device.compute_capability == (0, 0)


def test_qlora_on_cpu_is_refused_with_exit_42() -> None:
    with pytest.raises(UnsupportedHardware) as info:
        check_quantization(Method(type="qlora"), CPU)
    assert info.value.exit_code == EXIT_INVALID_INPUT
    assert info.value.reason == "UnsupportedHardware"
    assert "spec.method.type: qlora needs a CUDA GPU" in info.value.message
    assert "type: lora" in info.value.message


def test_qlora_without_bitsandbytes_says_what_to_install() -> None:
    with pytest.raises(UnsupportedHardware, match="bitsandbytes package"):
        check_quantization(Method(type="qlora"), GPU_WITHOUT_BNB)
    check_quantization(Method(type="lora"), CPU)  # plain LoRA needs nothing


def test_float8_qlora_needs_neither_a_gpu_nor_bitsandbytes() -> None:
    float8 = Method(type="qlora", quantization=Quantization(bits=8))
    check_quantization(float8, CPU)
    check_quantization(float8, GPU_WITHOUT_BNB)
    int8 = Method(type="qlora", quantization=Quantization(bits=8, format="int8"))
    with pytest.raises(UnsupportedHardware, match="needs a CUDA GPU"):
        check_quantization(int8, CPU)
