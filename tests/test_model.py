"""The MMaDA/LLaDA model: published names and shapes, strict loading, real padding masks."""

import json
from pathlib import Path

import pytest
import torch

from pipeline.image_tokenizer import MagvitV2
from trainer.model import MMaDAConfig, MMaDAModel
from trainer.model_io import load_model, resolve, save_model

COMPAT = Path(__file__).parent / "data" / "mmada8b_params.json"  # a copy of shared/compat
TINY = MMaDAConfig(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, embedding_size=300, vocab_size=200,
                   max_sequence_length=64)


def tiny(seed=0):
    torch.manual_seed(seed)
    return MMaDAModel(TINY).eval()


def test_8b_config_has_the_published_names_and_shapes():
    published = json.loads(COMPAT.read_text())
    config = MMaDAConfig.from_dict(published["config"])
    assert (config.d_model, config.n_layers, config.embedding_size, config.rope_theta) == (4096, 32, 134656, 500000.0)
    with torch.device("meta"):  # 8B parameters, no memory
        model = MMaDAModel(config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == published["params"]
    assert sum(v.numel() for v in model.state_dict().values()) == published["num_elements"]


def test_save_and_load_round_trip_strictly(tmp_path):
    model = tiny()
    ids = torch.randint(0, 300, (2, 10))
    save_model(model, tmp_path / "one")
    assert torch.equal(load_model(str(tmp_path / "one"))(ids), model(ids))
    save_model(model, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert torch.equal(load_model(str(tmp_path / "sharded"))(ids), model(ids))
    bf16 = load_model(str(tmp_path / "one"), dtype=torch.bfloat16)
    assert bf16(ids).dtype == torch.bfloat16
    # strict: an extra or missing tensor is an error
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "one" / "model.safetensors")
    state["model.transformer.blocks.0.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "one" / "model.safetensors")
    with pytest.raises(ValueError, match=r"1 unexpected \(model.transformer.blocks.0.extra.weight\)"):
        load_model(str(tmp_path / "one"))


def _broken(folder: Path, how: str) -> None:
    """Break a saved model folder one way a download or a hand edit does."""
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "huge header":
        weights.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    elif how == "not safetensors":
        weights.write_bytes(b"<html>404 Not Found</html>")
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "config not json":
        (folder / "config.json").write_text("{'d_model': 64")
    else:
        state = load_file(weights)
        name = "model.transformer.blocks.1.attn_out.weight"
        if how == "wrong shape":
            state[name] = torch.zeros(64, 32)
        elif how == "missing layer":
            state = {k: v for k, v in state.items() if ".blocks.1." not in k}
        save_file(state, weights)


@pytest.mark.parametrize("how, says", [
    ("truncated", "not a readable safetensors file"), ("huge header", "not a readable safetensors file"),
    ("not safetensors", "not a readable safetensors file"), ("empty", "not a readable safetensors file"),
    ("config not json", "config.json: not a JSON file"),
    ("wrong shape", r"1 of the wrong shape \(model.transformer.blocks.1.attn_out.weight \[64, 32\] where the config says \[64, 64\]\)"),
    ("missing layer", r"missing \(model.transformer.blocks.1"),
])
def test_a_broken_model_file_is_named_with_what_was_expected(tmp_path, how, says):
    """A corrupt, truncated, absurd-header or foreign weights file, a config that is not JSON, a
    tensor of the wrong shape, a missing layer: one ValueError naming the file and what differs
    (the CLI prints it as one line), not safetensors' or torch's traceback."""
    save_model(tiny(), tmp_path / "m")
    _broken(tmp_path / "m", how)
    with pytest.raises(ValueError, match=says) as refused:
        load_model(str(tmp_path / "m"))
    assert str(tmp_path / "m") in str(refused.value)


def test_an_index_naming_a_file_outside_the_folder_is_refused(tmp_path):
    save_model(tiny(), tmp_path / "m", max_shard_bytes=40_000)
    index = tmp_path / "m" / "model.safetensors.index.json"
    spec = json.loads(index.read_text())
    spec["weight_map"] = dict.fromkeys(spec["weight_map"], "../../elsewhere.safetensors")
    index.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="refused the name"):
        load_model(str(tmp_path / "m"))


def test_one_resolver_for_every_model(tmp_path):
    """MMaDA and MAGVIT-v2 names go through the same resolver (pipeline.hub): a folder is used as it
    is; a path that is no folder is refused by name, never looked up on the hub."""
    save_model(tiny(), tmp_path / "mmada")
    assert resolve(str(tmp_path / "mmada")) == tmp_path / "mmada"
    for load in (load_model, MagvitV2.from_pretrained):
        with pytest.raises(ValueError, match="missing: not a model folder"):
            load(str(tmp_path / "missing"))


def test_padding_is_really_masked():
    model = tiny()
    ids = torch.randint(0, 300, (1, 8))
    padded = torch.cat([ids, torch.full((1, 5), 126 % 300)], dim=1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 5)], dim=1)
    with torch.no_grad():
        alone, masked, unmasked = model(ids), model(padded, mask)[:, :8], model(padded)[:, :8]
    assert torch.allclose(alone, masked, atol=1e-5)  # padding changes nothing when masked
    assert not torch.allclose(alone, unmasked, atol=1e-3)  # and would, were it not


def test_attention_is_bidirectional():
    model = tiny()
    ids = torch.randint(0, 300, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 300
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])  # the first sees the last


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="block_type"):
        MMaDAConfig.from_dict({"block_type": "sequential"})
    assert MMaDAConfig.from_dict({"d_model": 64, "mlp_ratio": 4, "mlp_hidden_size": None}).mlp_hidden_size == 256


def test_a_token_layout_from_another_model_is_refused():
    """`trainer sample | eval` and SFT from a model read it with its saved layout: one whose
    vocabulary is not the model's embedding (a `paraforge_sequence.json` copied from another run)
    would put every image code on the wrong row."""
    from schemas import TokenLayout
    from trainer.model_io import check_layout

    model = tiny()
    check_layout(model, TokenLayout.compact(200, image_codebook_size=100), "m")
    with pytest.raises(ValueError, match="the model has 300 embeddings, but its token layout"):
        check_layout(model, TokenLayout.compact(200, image_codebook_size=8192), "m")
