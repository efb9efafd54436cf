"""Conditioners: map defect keys ("magnetic_tile/crack", "good") to the UNet's cross-attention context (B, L, D).

Two conditioners share one interface, ``forward(keys) -> (B, L, D)``, ``trainable_parameters()`` and ``keys``:

* :class:`TextualInversionConditioner` wraps a frozen pretrained text encoder (the LDM's ``LDMBertModel``, a
  ``BertModel`` or a ``CLIPTextModel``) and learns, per key, ``num_vectors`` token embeddings that stand in for the
  placeholder of the prompt template "Anomaly *" (FAST_SPEC §6, textual inversion). The substitution happens at the
  token-embedding layer: a forward hook on ``text_encoder.get_input_embeddings()``, registered only for the duration of
  one call, overwrites the placeholder rows of its output, and the encoder is called as the LDM pipeline calls it,
  ``text_encoder(input_ids)[0]``. One mechanism serves every encoder: ``CLIPTextModel`` rejects ``inputs_embeds`` (it
  needs ``input_ids`` for pooling), and for BERT-like encoders the hook is identical to passing ``inputs_embeds``.
* :class:`LearnedPromptEncoder` is the from-scratch counterpart: a learned per-key token table refined by a small
  transformer encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fast_core.configbase import check_choices

logger = logging.getLogger(__name__)


def _check_keys(keys: list[str] | tuple[str, ...], owner: str, allow_empty: bool = False) -> list[str]:
    """Validate a list of defect keys (unique, non-empty strings; at least one unless allowed) and return it."""
    if isinstance(keys, str):
        raise ValueError(f"{owner}: keys must be a list of strings, got the string {keys!r}")
    keys = list(keys)
    if not keys and not allow_empty:
        raise ValueError(f"{owner}: keys must name at least one defect key, e.g. ['good', 'magnetic_tile/crack']")
    bad = [k for k in keys if not isinstance(k, str) or not k]
    if bad:
        raise ValueError(f"{owner}: keys must be non-empty strings, got {bad!r}")
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"{owner}: duplicate keys {dupes!r}")
    return keys


def _key_indices(requested: list[str], index: dict[str, int], owner: str) -> list[int]:
    """Row indices of ``requested`` keys; an unknown key is a ``ValueError`` that lists the known ones."""
    if isinstance(requested, str):
        raise ValueError(f"{owner}: keys must be a list of strings, got the string {requested!r}")
    unknown = [k for k in requested if k not in index]
    if unknown:
        raise ValueError(f"{owner}: unknown key(s) {unknown!r}; known keys: {', '.join(index)}")
    if not requested:
        raise ValueError(f"{owner}: the batch of keys is empty")
    return [index[k] for k in requested]


# textual inversion over a frozen pretrained text encoder


@dataclass(kw_only=True)
class TextualInversionConfig:
    """Settings of :class:`TextualInversionConditioner` (the text encoder and tokenizer are passed separately)."""

    keys: list[str] = field(default_factory=list)  # defect keys, one set of learned vectors each
    num_vectors: int = 4  # learned token vectors that replace the placeholder [release: 4]
    placeholder: str = "*"  # the template's placeholder; must tokenise to exactly one token
    template: str = "Anomaly *"  # prompt template [release]; contains the placeholder exactly once
    init_word: str = "defect"  # the vectors start at this word's token embedding (mean over its word pieces) ...
    init_noise: float = 0.1  # ... plus N(0, (init_noise · std of that embedding)²) noise per element
    max_length: int | None = None  # context length L; None: min(tokenizer.model_max_length, encoder positions)

    def __post_init__(self) -> None:
        check_choices(self)
        self.keys = _check_keys(self.keys, "TextualInversionConfig", allow_empty=True)
        if self.num_vectors < 1:
            raise ValueError(f"TextualInversionConfig.num_vectors must be >= 1, got {self.num_vectors}")
        if self.init_noise < 0:
            raise ValueError(f"TextualInversionConfig.init_noise must be >= 0, got {self.init_noise}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"TextualInversionConfig.max_length must be >= 1 or null, got {self.max_length}")


class TextualInversionConditioner(nn.Module):
    """Per-key learned token vectors spliced into a frozen text encoder's input (textual inversion).

    The template "Anomaly *" is tokenised once; the placeholder token is repeated ``num_vectors`` times and the
    sequence is padded with the pad token to L (the LDM pipeline pads prompts to 77). For a batch of keys k_b:

        E = Embed(input_ids)                      # (B, L, D_tok), the encoder's own token embedding
        E[b, p : p + n] = V[k_b]                  # V: (K, n, D_tok) learned; p the placeholder position
        c = TextEncoder(E)                        # (B, L, D) last hidden states

    Only V is trainable; the encoder is frozen (``requires_grad=False``) and kept in eval mode (no dropout), but
    gradients flow through it to V.

    Args:
        text_encoder: a transformers-style text encoder with ``get_input_embeddings()`` whose forward takes
            ``input_ids`` and returns the last hidden states first (``LDMBertModel``, ``BertModel``,
            ``CLIPTextModel``).
        tokenizer: its tokenizer (callable, with ``pad_token_id``, ``unk_token_id`` and ``model_max_length``).
        keys: the known defect keys.
        num_vectors, placeholder, template, init_word, init_noise, max_length: see :class:`TextualInversionConfig`.
        generator: the random source of the initial noise (CPU generator), for a reproducible initialisation.
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        tokenizer: Any,
        keys: list[str],
        num_vectors: int = 4,
        placeholder: str = "*",
        template: str = "Anomaly *",
        *,
        init_word: str = "defect",
        init_noise: float = 0.1,
        max_length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.config = TextualInversionConfig(
            keys=list(keys),
            num_vectors=num_vectors,
            placeholder=placeholder,
            template=template,
            init_word=init_word,
            init_noise=init_noise,
            max_length=max_length,
        )
        self.keys: list[str] = _check_keys(self.config.keys, type(self).__name__)
        self._index = {k: i for i, k in enumerate(self.keys)}
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.text_encoder.requires_grad_(False)
        self.text_encoder.eval()
        embedding = self._embedding_layer()

        ids, self.placeholder_position = self._template_ids()
        self.register_buffer("input_ids", torch.tensor(ids, dtype=torch.long)[None, :], persistent=False)  # (1, L)

        # V: (K, n, D_tok) = embedding(init_word) + noise
        init_ids = self._tokenize(self.config.init_word)
        unk = getattr(tokenizer, "unk_token_id", None)
        if not init_ids or (unk is not None and unk in init_ids):
            raise ValueError(
                f"TextualInversionConditioner: init_word {self.config.init_word!r} is not in the tokenizer's "
                f"vocabulary (token ids {init_ids}); pick a word the tokenizer knows"
            )
        with torch.no_grad():
            weight = embedding.weight
            init = weight[torch.tensor(init_ids, device=weight.device)].float().mean(dim=0).cpu()  # (D_tok,)
        shape = (len(self.keys), self.config.num_vectors, init.numel())
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        scale = self.config.init_noise * float(init.std()) if init.numel() > 1 else self.config.init_noise
        self.token_vectors = nn.Parameter((init.expand(shape) + scale * noise).to(weight.device))  # (K, n, D_tok)
        logger.debug(
            "textual inversion: %d keys × %d vectors of dim %d, L=%d, placeholder at %d",
            len(self.keys),
            self.config.num_vectors,
            init.numel(),
            len(ids),
            self.placeholder_position,
        )

    @classmethod
    def from_config(
        cls,
        text_encoder: nn.Module,
        tokenizer: Any,
        config: TextualInversionConfig,
        generator: torch.Generator | None = None,
    ) -> TextualInversionConditioner:
        """Build from a :class:`TextualInversionConfig`."""
        return cls(
            text_encoder,
            tokenizer,
            config.keys,
            config.num_vectors,
            config.placeholder,
            config.template,
            init_word=config.init_word,
            init_noise=config.init_noise,
            max_length=config.max_length,
            generator=generator,
        )

    def _embedding_layer(self) -> nn.Embedding:
        get = getattr(self.text_encoder, "get_input_embeddings", None)
        layer = get() if callable(get) else None
        if not isinstance(layer, nn.Embedding):
            raise ValueError(
                "TextualInversionConditioner needs a text encoder whose get_input_embeddings() returns an "
                f"nn.Embedding (LDMBertModel, BertModel, CLIPTextModel); got {type(self.text_encoder).__name__}"
            )
        return layer

    def _tokenize(self, text: str, special: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _context_length(self) -> int:
        """L: ``max_length`` if set, else min(tokenizer.model_max_length, encoder max_position_embeddings)."""
        if self.config.max_length is not None:
            return self.config.max_length
        limits = [getattr(self.tokenizer, "model_max_length", None)]
        limits.append(getattr(getattr(self.text_encoder, "config", None), "max_position_embeddings", None))
        limits = [int(x) for x in limits if isinstance(x, int | float) and x > 0]
        if not limits:
            raise ValueError(
                "TextualInversionConditioner: the context length is unknown (no tokenizer.model_max_length or "
                "text_encoder.config.max_position_embeddings); pass max_length"
            )
        return min(limits)

    def _template_ids(self) -> tuple[list[int], int]:
        """Token ids of the template with the placeholder repeated n times, padded to L; and its position."""
        cfg = self.config
        placeholder_ids = self._tokenize(cfg.placeholder)
        if len(placeholder_ids) != 1:
            raise ValueError(
                f"TextualInversionConditioner: placeholder {cfg.placeholder!r} must be a single token, "
                f"it tokenises to {placeholder_ids}"
            )
        pid = placeholder_ids[0]
        ids = self._tokenize(cfg.template, special=True)
        positions = [i for i, x in enumerate(ids) if x == pid]
        if len(positions) != 1:
            raise ValueError(
                f"TextualInversionConditioner: template {cfg.template!r} must contain the placeholder "
                f"{cfg.placeholder!r} exactly once, found {len(positions)}"
            )
        p = positions[0]
        ids = ids[:p] + [pid] * cfg.num_vectors + ids[p + 1 :]
        length = self._context_length()
        if len(ids) > length:
            raise ValueError(
                f"TextualInversionConditioner: the template needs {len(ids)} tokens with {cfg.num_vectors} vectors, "
                f"more than the context length {length}"
            )
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            raise ValueError("TextualInversionConditioner: the tokenizer has no pad token (pad_token_id is None)")
        return ids + [pad] * (length - len(ids)), p

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The learned token vectors V (the only trainable tensor)."""
        return [self.token_vectors]

    def train(self, mode: bool = True) -> TextualInversionConditioner:
        """Set train/eval mode; the frozen text encoder always stays in eval mode (no dropout)."""
        super().train(mode)
        self.text_encoder.eval()
        return self

    @contextmanager
    def _substitute(self, vectors: torch.Tensor) -> Iterator[None]:
        """Overwrite rows p … p+n−1 of the token-embedding output with ``vectors`` (B, n, D_tok) during the block."""
        p, n = self.placeholder_position, self.config.num_vectors

        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            out = output.clone()  # (B, L, D_tok)
            out[:, p : p + n] = vectors.to(out.dtype)
            return out

        handle = self._embedding_layer().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def key_indices(self, keys: list[str]) -> list[int]:
        """Each key's row in ``self.keys``; an unknown key or an empty batch is a ``ValueError``."""
        return _key_indices(keys, self._index, type(self).__name__)

    def forward(self, keys: list[str]) -> torch.Tensor:
        """Encoder hidden states for a batch of defect keys.

        Args:
            keys: B defect keys, each one of ``self.keys``.

        Returns:
            (B, L, D) last hidden states of the text encoder.
        """
        idx = self.key_indices(keys)
        vectors = self.token_vectors[torch.tensor(idx, device=self.token_vectors.device)]  # (B, n, D_tok)
        input_ids = self.input_ids.expand(len(idx), -1)  # (B, L)
        with self._substitute(vectors):
            out = self.text_encoder(input_ids)
        return out[0]


# from-scratch prompt encoder


@dataclass(kw_only=True)
class PromptEncoderConfig:
    """Shape of :class:`LearnedPromptEncoder`; ``dim`` must equal the UNet's ``cross_attention_dim``."""

    keys: list[str] = field(default_factory=list)  # defect keys, e.g. ["good", "magnetic_tile/crack"]
    seq_len: int = 8  # L: tokens per key
    dim: int = 128  # D: token width (the UNet's cross_attention_dim)
    num_heads: int = 4  # attention heads of the refining transformer layer(s); must divide dim
    num_layers: int = 1  # transformer encoder layers on top of the token table
    init_std: float = 0.02  # std of the token table's initial values

    def __post_init__(self) -> None:
        check_choices(self)
        self.keys = _check_keys(self.keys, "PromptEncoderConfig", allow_empty=True)
        if self.seq_len < 1:
            raise ValueError(f"PromptEncoderConfig.seq_len must be >= 1, got {self.seq_len}")
        if self.dim < 1 or self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(
                f"PromptEncoderConfig.dim ({self.dim}) must be a positive multiple of num_heads ({self.num_heads})"
            )
        if self.num_layers < 0:
            raise ValueError(f"PromptEncoderConfig.num_layers must be >= 0, got {self.num_layers}")
        if self.init_std <= 0:
            raise ValueError(f"PromptEncoderConfig.init_std must be > 0, got {self.init_std}")


class LearnedPromptEncoder(nn.Module):
    """A from-scratch conditioner: per-key learned tokens refined by a small pre-norm transformer.

        c = LayerNorm(Transformer(T[k_b]))        # T: (K, L, D) learned; (B, L, D) out

    Every parameter is trainable. Initialisation draws only from ``generator``: the table from N(0, init_std²),
    linear and attention weights from N(0, 1/fan_in), biases 0, LayerNorms (1, 0).

    >>> enc = LearnedPromptEncoder(PromptEncoderConfig(keys=["good", "tile/crack"], dim=32))
    >>> enc(["tile/crack", "good", "good"]).shape
    torch.Size([3, 8, 32])
    """

    def __init__(self, config: PromptEncoderConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.keys: list[str] = _check_keys(config.keys, type(self).__name__)
        self._index = {k: i for i, k in enumerate(self.keys)}
        self.tokens = nn.Parameter(torch.empty(len(self.keys), config.seq_len, config.dim))  # (K, L, D)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=config.dim,
                nhead=config.num_heads,
                dim_feedforward=4 * config.dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.dim)
        self._init_weights(generator)

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        """Deterministic initialisation from ``generator`` (see the class docstring)."""
        norm_params = {id(p) for mod in self.modules() if isinstance(mod, nn.LayerNorm) for p in mod.parameters()}
        for name, param in self.named_parameters():
            if name == "tokens":
                param.copy_(torch.randn(param.shape, generator=generator) * self.config.init_std)
            elif id(param) in norm_params:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif param.ndim >= 2:  # linear / attention projection weights (out, in)
                param.copy_(torch.randn(param.shape, generator=generator) * param.shape[1] ** -0.5)
            else:  # biases
                param.zero_()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """All parameters (the table and the transformer)."""
        return list(self.parameters())

    def key_indices(self, keys: list[str]) -> list[int]:
        """Each key's row in ``self.keys``; an unknown key or an empty batch is a ``ValueError``."""
        return _key_indices(keys, self._index, type(self).__name__)

    def forward(self, keys: list[str]) -> torch.Tensor:
        """Context tokens for a batch of defect keys.

        Args:
            keys: B defect keys, each one of ``self.keys``.

        Returns:
            (B, seq_len, dim) context for the UNet's cross-attention.
        """
        idx = self.key_indices(keys)
        x = self.tokens[torch.tensor(idx, device=self.tokens.device)]  # (B, L, D)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
