"""Tests for the conditioners: the from-scratch prompt encoder and textual inversion over tiny frozen text encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer, CLIPTextConfig, CLIPTextModel

from fast_core.configbase import from_dict, to_dict
from fast_core.models.conditioning import (
    LearnedPromptEncoder,
    PromptEncoderConfig,
    TextualInversionConditioner,
    TextualInversionConfig,
)

KEYS = ["good", "magnetic_tile/crack", "magnetic_tile/blowhole"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "anomaly", "*", "defect", "crack", "hole", "a", "photo", "of"]


# LearnedPromptEncoder


def _prompt_encoder(seed: int = 0, **kw: object) -> LearnedPromptEncoder:
    cfg = PromptEncoderConfig(keys=KEYS, seq_len=6, dim=16, num_heads=2, **kw)
    return LearnedPromptEncoder(cfg, generator=torch.Generator().manual_seed(seed))


def test_prompt_encoder_shape_and_per_key_output() -> None:
    enc = _prompt_encoder()
    out = enc(["magnetic_tile/crack", "good", "magnetic_tile/crack"])
    assert out.shape == (3, 6, 16)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=1e-6)
    assert (out[0] - out[1]).abs().max() > 1e-3
    assert enc.keys == KEYS


def test_prompt_encoder_deterministic_init() -> None:
    a, b, c = _prompt_encoder(seed=1), _prompt_encoder(seed=1), _prompt_encoder(seed=2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.layers[0].linear1.weight, c.layers[0].linear1.weight)
    assert a.tokens.std().item() == pytest.approx(0.02, rel=0.2)


def test_prompt_encoder_all_parameters_train() -> None:
    enc = _prompt_encoder(num_layers=2)
    assert {id(p) for p in enc.trainable_parameters()} == {id(p) for p in enc.parameters()}
    enc(["good", "magnetic_tile/blowhole"]).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert enc.tokens.grad[1].abs().sum() == 0  # "magnetic_tile/crack" was not in the batch


def test_prompt_encoder_errors() -> None:
    enc = _prompt_encoder()
    with pytest.raises(ValueError, match="known keys: good, magnetic_tile/crack, magnetic_tile/blowhole"):
        enc(["good", "carpet/hole"])
    with pytest.raises(ValueError, match="list of strings"):
        enc("good")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        PromptEncoderConfig(keys=KEYS, dim=10, num_heads=4)
    with pytest.raises(ValueError, match="duplicate"):
        PromptEncoderConfig(keys=["good", "good"])
    with pytest.raises(ValueError, match="at least one"):
        LearnedPromptEncoder(PromptEncoderConfig())
    cfg = from_dict(PromptEncoderConfig, {"keys": KEYS, "dim": 32})
    assert from_dict(PromptEncoderConfig, to_dict(cfg)) == cfg


# TextualInversionConditioner


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizer:
    vocab = Path(tmp_path_factory.mktemp("tok")) / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizer(str(vocab), model_max_length=16)


def _bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(cfg)


def _ti(encoder: torch.nn.Module, tokenizer: BertTokenizer, seed: int = 0, **kw: object) -> TextualInversionConditioner:
    return TextualInversionConditioner(encoder, tokenizer, KEYS, generator=torch.Generator().manual_seed(seed), **kw)


def _reference_via_inputs_embeds(cond: TextualInversionConditioner, keys: list[str]) -> torch.Tensor:
    """The same substitution done by hand through the encoder's ``inputs_embeds`` argument."""
    ids = cond.input_ids.expand(len(keys), -1)
    embeds = cond.text_encoder.get_input_embeddings()(ids).clone()
    p, n = cond.placeholder_position, cond.config.num_vectors
    embeds[:, p : p + n] = cond.token_vectors[[KEYS.index(k) for k in keys]]
    return cond.text_encoder(inputs_embeds=embeds)[0]


def test_ti_template_and_placeholder(tokenizer: BertTokenizer) -> None:
    cond = _ti(_bert(), tokenizer)
    vid = tokenizer.convert_tokens_to_ids
    expected = [vid("[CLS]"), vid("anomaly")] + [vid("*")] * 4 + [vid("[SEP]")] + [vid("[PAD]")] * 9
    assert cond.input_ids[0].tolist() == expected  # padded to min(model_max_length 16, positions 32)
    assert cond.placeholder_position == 2
    assert cond.token_vectors.shape == (3, 4, 16)


def test_ti_output_matches_inputs_embeds_and_depends_on_vectors(tokenizer: BertTokenizer) -> None:
    cond = _ti(_bert(), tokenizer)
    keys = ["magnetic_tile/crack", "good"]
    with torch.no_grad():
        out = cond(keys)
        assert out.shape == (2, 16, 16)
        torch.testing.assert_close(out, _reference_via_inputs_embeds(cond, keys), rtol=0, atol=1e-6)
        assert (out[0] - out[1]).abs().max() > 1e-4  # different keys, different vectors
        plain = cond.text_encoder(cond.input_ids)[0]  # the raw "*" embeddings
        assert (out[0] - plain[0]).abs().max() > 1e-3
        cond.token_vectors[1].add_(torch.linspace(-1.0, 1.0, 16))  # not a constant shift: BERT LayerNorms those away
        changed = cond(keys)
    assert (changed[0] - out[0]).abs().max() > 1e-3
    torch.testing.assert_close(changed[1], out[1], rtol=0, atol=0)


def test_ti_only_vectors_train_and_encoder_stays_frozen(tokenizer: BertTokenizer) -> None:
    cond = _ti(_bert(), tokenizer)
    cond.train()
    assert not cond.text_encoder.training
    assert cond.trainable_parameters() == [cond.token_vectors]
    assert [n for n, p in cond.named_parameters() if p.requires_grad] == ["token_vectors"]
    cond(["magnetic_tile/blowhole", "good"]).square().mean().backward()
    grad = cond.token_vectors.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert grad[1].abs().sum() == 0
    assert all(p.grad is None for p in cond.text_encoder.parameters())
    # the hook lives only for the call
    emb = cond.text_encoder.get_input_embeddings()
    assert not emb._forward_hooks


def test_ti_deterministic_init_from_init_word(tokenizer: BertTokenizer) -> None:
    enc = _bert()
    a, b, c = _ti(enc, tokenizer, seed=3), _ti(enc, tokenizer, seed=3), _ti(enc, tokenizer, seed=4)
    assert torch.equal(a.token_vectors, b.token_vectors)
    assert not torch.equal(a.token_vectors, c.token_vectors)
    defect = enc.get_input_embeddings().weight[VOCAB.index("defect")].detach()
    noise = a.token_vectors.detach() - defect
    assert noise.abs().max() > 0
    assert noise.std().item() == pytest.approx(0.1 * defect.std().item(), rel=0.35)
    assert (a.token_vectors[0, 0] - a.token_vectors[0, 1]).abs().max() > 0  # the n vectors start distinct


def test_ti_errors(tokenizer: BertTokenizer) -> None:
    enc = _bert()
    cond = _ti(enc, tokenizer)
    with pytest.raises(ValueError, match="known keys: good, magnetic_tile/crack, magnetic_tile/blowhole"):
        cond(["carpet/hole"])
    with pytest.raises(ValueError, match="exactly once"):
        _ti(enc, tokenizer, template="a photo of anomaly")
    with pytest.raises(ValueError, match="single token"):
        _ti(enc, tokenizer, placeholder="**", template="anomaly **")
    with pytest.raises(ValueError, match="vocabulary"):
        _ti(enc, tokenizer, init_word="scratch")
    with pytest.raises(ValueError, match="context length 5"):
        _ti(enc, tokenizer, max_length=5)
    with pytest.raises(ValueError, match="nn.Embedding"):
        TextualInversionConditioner(torch.nn.Linear(2, 2), tokenizer, KEYS)


def test_ti_from_config_and_max_length(tokenizer: BertTokenizer) -> None:
    cfg = from_dict(TextualInversionConfig, {"keys": KEYS, "num_vectors": 2, "max_length": 10})
    cond = TextualInversionConditioner.from_config(_bert(), tokenizer, cfg, generator=torch.Generator().manual_seed(0))
    assert cond(["good"]).shape == (1, 10, 16)
    assert cond.token_vectors.shape == (3, 2, 16)
    assert TextualInversionConfig().keys == []  # an empty key list is allowed in config, not in the module


def test_ti_with_clip_text_model(tokenizer: BertTokenizer) -> None:
    """CLIPTextModel needs input_ids (for pooling), so substitution must happen at the embedding layer."""
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=12,
        eos_token_id=VOCAB.index("[SEP]"),
        pad_token_id=0,
    )
    cond = _ti(CLIPTextModel(cfg), tokenizer)
    out = cond(["good", "magnetic_tile/crack"])
    assert out.shape == (2, 12, 16)  # min(tokenizer 16, positions 12)
    assert (out[0] - out[1]).abs().max() > 1e-4
    out.sum().backward()
    assert cond.token_vectors.grad[:2].abs().sum() > 0


def test_ti_with_ldmbert(tokenizer: BertTokenizer) -> None:
    """The CompVis LDM text encoder (diffusers' LDMBertModel), called as the LDM pipeline calls it."""
    try:
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
    except ImportError as exc:  # the class moved or was removed in this diffusers version
        pytest.skip(f"LDMBertModel is not importable: {exc}")
    torch.manual_seed(0)
    cfg = LDMBertConfig(
        vocab_size=len(VOCAB),
        max_position_embeddings=12,
        encoder_layers=1,
        encoder_ffn_dim=32,
        encoder_attention_heads=2,
        head_dim=8,
        d_model=16,
    )
    cond = _ti(LDMBertModel(cfg), tokenizer)
    keys = ["magnetic_tile/blowhole", "good"]
    out = cond(keys)
    assert out.shape == (2, 12, 16)
    assert cond.input_ids.shape == (1, 12)
    torch.testing.assert_close(out, _reference_via_inputs_embeds(cond, keys), rtol=0, atol=1e-6)
    assert (out[0] - out[1]).abs().max() > 1e-4
    out.square().mean().backward()
    assert cond.token_vectors.grad[0].abs().sum() > 0
    assert all(p.grad is None for p in cond.text_encoder.parameters())
