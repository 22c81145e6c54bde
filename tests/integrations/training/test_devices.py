"""Device selection: the best device present by default, a named one checked before any work."""

from __future__ import annotations

import pytest

from sae_variants.integrations.training.devices import Accelerators, choose_device

NONE = Accelerators()
TWO_GPUS = Accelerators(cuda_devices=2)
MAC = Accelerators(mps=True)


@pytest.mark.parametrize(
    ("available", "expected"), [(NONE, "cpu"), (TWO_GPUS, "cuda"), (MAC, "cpu")]
)
def test_auto_prefers_cuda_then_the_cpu(available: Accelerators, expected: str) -> None:
    assert choose_device(None, available) == expected
    assert choose_device("auto", available) == expected
    assert choose_device("auto", Accelerators(cuda_devices=1, mps=True)) == "cuda"


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:1"])
def test_a_present_device_is_kept_as_named(name: str) -> None:
    assert choose_device(name, TWO_GPUS) == name
    assert choose_device("mps", MAC) == "mps"  # MPS only when asked for


@pytest.mark.parametrize(
    ("name", "available", "message"),
    [
        ("cuda", NONE, "torch sees no CUDA device"),
        ("cuda:2", TWO_GPUS, "sees 2 CUDA device"),
        ("mps", TWO_GPUS, "no MPS backend"),
        ("gpu", TWO_GPUS, "device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'"),
        ("cpu:1", NONE, "the CPU takes no index"),
    ],
)
def test_an_absent_or_malformed_device_is_refused(
    name: str, available: Accelerators, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        choose_device(name, available)


def test_this_machine_is_asked_when_a_request_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from sae_variants.integrations.training.request import TrainRequest, build_runner_config

    monkeypatch.setattr(Accelerators, "present", staticmethod(lambda: TWO_GPUS))
    cfg, _ = build_runner_config(TrainRequest())
    assert cfg.device == "cuda"
    monkeypatch.setattr(Accelerators, "present", staticmethod(lambda: NONE))
    assert build_runner_config(TrainRequest())[0].device == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        build_runner_config(TrainRequest(device="cuda"))
