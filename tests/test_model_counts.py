"""Model counts (resnet_core.analysis.count_model, orchestrator.sweepfile.model_counts): exact
against torch's flop counter on the whole net, memory-free for huge nets, counted once per
`describe`, and without loading torch's compiler stack."""

import resource
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.cli import main
from orchestrator.sweepfile import model_counts
from orchestrator.sweepfile.model_counts import CountCache, check_model_size
from resnet_core import analysis
from resnet_core.analysis import count_model, count_params
from resnet_core.config import ModelConfig
from resnet_core.errors import ConfigError
from resnet_core.resnet import build_model

MODELS = [
    *(
        (ModelConfig(depth=11 if "bottleneck" in block else 8, block=block, shortcut=shortcut), 32, 10)
        for block in ("basic", "bottleneck", "preact-basic", "preact-bottleneck")
        for shortcut in "ABC"
    ),
    (ModelConfig(depth=14, residual=False, width=2, dropout=0.5), 24, 100),
    (ModelConfig(stages=(2, 1, 3), block="bottleneck", bottleneck_stride="3x3", shortcut="B"), 40, 7),
    (ModelConfig(arch="imagenet", depth=18), 64, 1000),
    (ModelConfig(arch="imagenet", depth=50, bottleneck_stride="3x3"), 72, 1000),
]


@pytest.fixture(autouse=True)
def _uncounted():
    """Each test counts afresh: what a model's blocks add is kept per process."""
    analysis._blocks_added.cache_clear()
    yield
    analysis._blocks_added.cache_clear()


def _whole_net(cfg: ModelConfig, size: int, classes: int) -> tuple[int, int, int]:
    """The reference: the whole net, built and run on one image under torch's flop counter."""
    model = build_model(cfg, num_classes=classes).eval()
    outputs = []
    for module in model.modules():
        if not any(module.children()):
            module.register_forward_hook(lambda _m, _in, out: outputs.append(out.numel()))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return count_params(model), counter.get_total_flops() // 2, sum(outputs)


@pytest.mark.unit
@pytest.mark.parametrize("cfg,size,classes", MODELS, ids=lambda v: getattr(v, "name", str(v)))
def test_counts_equal_torchs_flop_counter_on_the_whole_net(cfg, size, classes):
    counts = count_model(cfg, input_size=size, num_classes=classes)
    assert (counts.params, counts.macs, counts.activations) == _whole_net(cfg, size, classes)
    assert counts.classes == classes


@pytest.mark.unit
def test_the_meta_device_counts_what_the_cpu_counts(monkeypatch):
    """Nets over CPU_COUNT_MAX_PARAMS are counted on the meta device: the same numbers."""
    on_cpu = [count_model(cfg, input_size=size, num_classes=classes) for cfg, size, classes in MODELS[::5]]
    analysis._blocks_added.cache_clear()
    monkeypatch.setattr(analysis, "CPU_COUNT_MAX_PARAMS", 0)
    assert [count_model(cfg, input_size=size, num_classes=classes) for cfg, size, classes in MODELS[::5]] == on_cpu


@pytest.mark.unit
def test_a_huge_net_is_refused_from_its_counts_without_memory(tmp_path, monkeypatch):
    """ResNet-2498 at width 64 (165 billion parameters): counted on the meta device, refused
    naming the width, and the process grows by far less than one of its layers (0.6 GB)."""
    monkeypatch.setattr(model_counts, "COUNT_CACHE", CountCache())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError) as err:
        check_model_size(ModelConfig(depth=2498, width=64), classes=1000, image_size=32)
    assert err.value.field == "model.width" and "(164,808,161,256 parameters" in err.value.reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 400_000  # KiB


@pytest.mark.unit
def test_describe_counts_the_blocks_once(tmp_path, monkeypatch, capsys):
    """`describe`'s size check (at up to 1000 classes) and its description (at the model's 10)
    share one count of what the blocks add."""
    monkeypatch.setattr(model_counts, "COUNT_CACHE", CountCache())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["describe", "--depth", "110"]) == 0
    assert "1,727,962" in capsys.readouterr().out  # Table 6: 1.7M
    info = analysis._blocks_added.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_counting_loads_neither_dynamo_nor_sympy():
    """torch's flop counter and the meta device load torch._dynamo and sympy (≈ 1–2 s each);
    counting the nets a user describes needs neither."""
    code = (
        "import sys\n"
        "from resnet_core.analysis import describe_model\n"
        "from resnet_core.config import ModelConfig\n"
        "for cfg in (ModelConfig(depth=1202), ModelConfig(arch='imagenet', depth=152), ModelConfig(depth=26, width=10)):\n"
        "    describe_model(cfg)\n"
        "print([name for name in ('torch._dynamo', 'sympy') if name in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.unit
def test_two_processes_putting_at_once_keep_both_entries_and_a_bad_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first, second = CountCache(), CountCache()
    assert first.get("a") is None and second.get("b") is None  # both read the empty cache
    second.put("b", (2, 3))
    first.put("a", (1, 2))  # read before b was written: merged under the lock, not overwritten
    assert CountCache().get("a") == [1, 2] and CountCache().get("b") == [2, 3]
    for text in ("[]", "null", '{"version": "x", "co', '{"counts": []}'):
        first.path.write_text(text)
        assert CountCache().get("a") is None  # not the cache's shape: empty, no error
