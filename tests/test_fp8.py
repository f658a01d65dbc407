"""precision=fp8 (torchao's float8 training of the linear layers): the rules, the search's fp8 option,
and the model a rank builds with it, in torchao's emulation on this CPU against bf16's (the refusal
where no fp8 GPU is: test_bad_input.py)."""

from pathlib import Path

import pytest
import torch

from pipeline.check import compose, rules
from pipeline.errors import ConfigError

from helpers import rank_model


def test_emulated_fp8_trains_the_linear_layers_float8_can_take_near_bf16s_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from torchao.float8.float8_linear import Float8Linear

    point = ["model=llama_tiny", "zero=stage2", "trainer.torch_compile=false"]
    fp8 = rank_model([*point, "precision=fp8", "precision.fp8_emulate=true"], tmp_path / "fp8", monkeypatch)
    bf16 = rank_model([*point, "precision=bf16"], tmp_path / "bf16", monkeypatch)
    converted = [name for name, m in fp8.named_modules() if isinstance(m, Float8Linear)]
    linear = [name for name, m in bf16.named_modules() if isinstance(m, torch.nn.Linear)]
    # Attention's q k v o (128 wide) in float8; the MLP's (344 wide: float8 matmuls take multiples of 16)
    # and the head stay bf16.
    assert converted == [name for name in linear if ".self_attn." in name] and len(converted) == 2 * 4
    # The same seed built both: one batch's loss and gradients, each model in bf16 as DeepSpeed casts it.
    batch = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    losses, grads = [], []
    for net in (fp8, bf16):
        net.to(torch.bfloat16)
        loss = net(input_ids=batch, labels=batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(net.get_input_embeddings().weight.grad.float())
    assert losses[0] == pytest.approx(losses[1], rel=0.01), losses
    assert torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0) > 0.99


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["precision=fp8", "precision.dtype=fp16"], "precision.dtype", "bf16 outside the linear layers"),
        (["precision=fp8", "precision.fp8_recipe=delayed"], "precision.fp8_recipe", "no float8 recipe"),
        (["precision=fp8", "peft=lora"], "precision", "adapter's base is frozen"),
    ],
)
def test_fp8_rules(overrides: list[str], key: str, words: str):
    with pytest.raises(ConfigError) as refused:
        rules.check(compose.compose_point(overrides))
    assert str(refused.value).startswith(f"{key}: ") and words in str(refused.value)


def test_the_search_tries_fp8_only_where_the_user_trains_in_bf16():
    from pipeline.sweep.search.space import Space

    bf16 = Space.of(compose.compose_point(["search=fastest", "precision=bf16"]))
    assert bf16.choices["precision"] == [None, "fp8"]
    fp8_first = next(p for p in bf16.by_preference() if p["precision"] == "fp8")
    assert "precision=fp8" in bf16.overrides(fp8_first) and "precision=fp8" in bf16.name(fp8_first)
    yours = next(bf16.by_preference())
    assert not [o for o in bf16.overrides(yours) if o.startswith("precision=")]
    for other in ("fp32", "fp16", "fp8"):  # fp8 would change what fp32 or fp16 train; fp8 is its own
        assert Space.of(compose.compose_point(["search=fastest", f"precision={other}"])).choices[
            "precision"
        ] == [None]
