"""The Transformer block, and two tiny language models built from it: BERT-style and GPT-style.

One block (Vaswani et al., 2017), pre-norm by default (GPT-2 and most models since)::

    x = x + Attention(LayerNorm(x))        # tokens exchange information
    x = x + MLP(LayerNorm(x))              # each token is processed on its own

and post-norm (the original Transformer, BERT) with ``norm_first=False``::

    x = LayerNorm(x + Attention(x))
    x = LayerNorm(x + MLP(x))

The attention is the package's ``MultiHeadAttention``; the only difference between an encoder
block and a decoder block is the causal mask (``causal=True``: position ``t`` sees ``0 .. t``).

* ``TransformerConfig``    the sizes, with a divisibility check ``d_model % num_heads``.
* ``FeedForward``          the position-wise MLP ``D -> d_ff -> D``.
* ``TransformerBlock``     attention + MLP + residuals + LayerNorm; ``from_torch`` copies a
                           ``torch.nn.TransformerEncoderLayer`` so that the outputs agree.
* ``TransformerEncoder``   BERT-style: bidirectional, trained to predict masked tokens.
* ``TransformerDecoder``   GPT-style: causal, trained to predict the next token; ``generate``.
* ``num_parameters``       the parameter count of a model from its config, by formula.

Both models are the same network (token + learned position embeddings, ``num_layers`` blocks,
a final LayerNorm for pre-norm, a linear head to ``V`` logits at every position); they differ
only in the mask and in what they are trained to predict.

Dimension glossary (see ``attn_course`` for the full one)::

    B  batch size     T  sequence length (<= max_len)     V  vocabulary size
    D  d_model        H  num_heads, d = D // H             F  d_ff, the MLP's hidden width
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attn_course._validation import require_floating, require_int, require_tensor, shape_error
from attn_course.multihead import MultiHeadAttention
from attn_course.positional import LearnedPositionalEmbedding

__all__ = [
    "next_token_batch",
    "mask_for_mlm",
    "IGNORE_INDEX",
    "TransformerConfig",
    "FeedForward",
    "TransformerBlock",
    "TransformerEncoder",
    "TransformerDecoder",
    "num_parameters",
]

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


# --------------------------------------------------------------------------- config


@dataclass
class TransformerConfig:
    """The sizes of a Transformer; the defaults make a tiny model that trains in seconds on a CPU."""

    vocab_size: int = 16  # V: token ids are 0 .. V - 1 (special tokens included)
    max_len: int = 32  # the longest sequence: one learned position embedding per position
    d_model: int = 64  # D: the width of every token's vector (the residual stream)
    num_heads: int = 4  # H: attention heads per block, each of width d = D // H
    num_layers: int = 2  # blocks stacked on top of each other
    d_ff: int = 256  # F: the MLP's hidden width (4 * D in the paper and in GPT-2)
    dropout: float = 0.0  # on attention weights and on each sublayer's output (training only)
    norm_first: bool = True  # pre-norm (GPT-2, default) or post-norm (original Transformer, BERT)
    activation: str = "gelu"  # the MLP's non-linearity: "gelu" (BERT, GPT) or "relu" (the paper)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "num_heads", "num_layers", "d_ff"):
            value = getattr(self, name)
            require_int(value, f"TransformerConfig.{name}")
        if self.d_model % self.num_heads:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0]
            raise ValueError(
                f"TransformerConfig: d_model ({self.d_model}) must be divisible by num_heads "
                f"({self.num_heads}), since each head gets d_model / num_heads features; "
                f"num_heads could be one of {divisors}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"TransformerConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TransformerConfig.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def head_dim(self) -> int:
        """``d = D // H``, the width of one head."""
        return self.d_model // self.num_heads


def _check_config(config: object) -> TransformerConfig:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
    return config


# --------------------------------------------------------------------------- the block


class FeedForward(nn.Module):
    """The position-wise MLP: ``fc2(activation(fc1(x)))``, ``D -> F -> D``, the same for every token."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        config = _check_config(config)
        self.fc1 = nn.Linear(config.d_model, config.d_ff)  # (F, D)
        self.fc2 = nn.Linear(config.d_ff, config.d_model)  # (D, F)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))  # (B, T, D) -> (B, T, F) -> (B, T, D)


class TransformerBlock(nn.Module):
    """Self-attention and an MLP, each wrapped in a residual connection and a LayerNorm.

    ``causal=True`` makes it a decoder (GPT) block: token ``t`` attends to tokens ``0 .. t`` only.
    ``causal=False`` is an encoder (BERT) block: every token attends to every (real) token.

    The parameter and submodule layout mirrors ``torch.nn.TransformerEncoderLayer``
    (``attn`` ~ ``self_attn``, ``mlp.fc1/fc2`` ~ ``linear1/2``, ``norm1/2`` ~ ``norm1/2``), and
    ``from_torch`` copies one over.
    """

    def __init__(self, config: TransformerConfig, causal: bool = False) -> None:
        super().__init__()
        config = _check_config(config)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        self.causal, self.norm_first = causal, config.norm_first
        self.attn = MultiHeadAttention(config.d_model, config.num_heads, dropout=config.dropout)
        self.mlp = FeedForward(config)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.dropout1 = nn.Dropout(config.dropout)  # on the attention sublayer's output
        self.dropout2 = nn.Dropout(config.dropout)  # on the MLP sublayer's output

    def extra_repr(self) -> str:
        return f"causal={self.causal}, norm_first={self.norm_first}"

    def _attend(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out, weights = self.attn(x, x, x, key_padding_mask=key_padding_mask, is_causal=self.causal)
        return self.dropout1(out), weights  # (B, T, D), (B, H, T, T)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, T, D)`` -> ``(x (B, T, D), attention weights (B, H, T, T))``.

        ``key_padding_mask``: bool ``(B, T)``, ``True`` = real token (the package's rule); padding
        is never attended to. The outputs at padded positions are computed but meaningless.
        """
        require_floating(x, "x")
        D = self.norm1.normalized_shape[0]
        if x.dim() != 3 or x.shape[-1] != D:
            raise shape_error("x", x, f"(B, T, {D}) (batch-first, D = d_model = {D})")
        if self.norm_first:
            a, weights = self._attend(self.norm1(x), key_padding_mask)
            x = x + a  # (B, T, D): the residual stream
            x = x + self.dropout2(self.mlp(self.norm2(x)))  # (B, T, D)
        else:
            a, weights = self._attend(x, key_padding_mask)
            x = self.norm1(x + a)  # (B, T, D)
            x = self.norm2(x + self.dropout2(self.mlp(x)))  # (B, T, D)
        return x, weights

    @classmethod
    def from_torch(cls, layer: nn.TransformerEncoderLayer, causal: bool = False) -> TransformerBlock:
        """A ``TransformerBlock`` with the weights of torch's ``layer`` (so the outputs agree).

        Reads the sizes, ``norm_first``, the activation (``"relu"`` or ``"gelu"``), dropout and the
        LayerNorm epsilon from ``layer``. Torch's layer takes the causal mask at call time
        (``src_mask``, ``is_causal``); ours fixes it at construction, hence ``causal``. Ours is
        always batch-first: a ``batch_first=False`` layer takes ``(T, B, D)``, ours ``(B, T, D)``.
        Not supported (``ValueError``): layers without biases and custom activation functions.
        """
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(f"layer must be a torch.nn.TransformerEncoderLayer, got {type(layer).__name__}")
        activation = {1: "relu", 2: "gelu"}.get(getattr(layer, "activation_relu_or_gelu", 0))
        if activation is None:
            raise ValueError("layer has a custom activation; only 'relu' and 'gelu' are supported")
        if layer.linear1.bias is None or layer.norm1.bias is None:
            raise ValueError("layer has bias=False; TransformerBlock always has biases")
        D = layer.self_attn.embed_dim
        config = TransformerConfig(
            vocab_size=1,  # a block has no embeddings: vocab_size and max_len are not used
            max_len=1,
            d_model=D,
            num_heads=layer.self_attn.num_heads,
            d_ff=layer.linear1.out_features,
            dropout=layer.dropout.p,
            norm_first=layer.norm_first,
            activation=activation,
        )
        block = cls(config, causal=causal)
        block.attn = MultiHeadAttention.from_torch(layer.self_attn)
        ref = layer.linear1.weight
        block = block.to(device=ref.device, dtype=ref.dtype)
        block.mlp.fc1.load_state_dict(layer.linear1.state_dict())
        block.mlp.fc2.load_state_dict(layer.linear2.state_dict())
        block.norm1.load_state_dict(layer.norm1.state_dict())
        block.norm2.load_state_dict(layer.norm2.state_dict())
        block.norm1.eps, block.norm2.eps = layer.norm1.eps, layer.norm2.eps
        block.train(layer.training)
        return block


# --------------------------------------------------------------------------- the two models


class TransformerLM(nn.Module):
    """Embeddings -> ``num_layers`` blocks -> final LayerNorm (pre-norm only) -> logits over ``V``."""

    causal: bool = False

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config = _check_config(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)  # (V, D)
        nn.init.normal_(self.tok_emb.weight, std=0.02)  # as in BERT and GPT-2
        self.pos_emb = LearnedPositionalEmbedding(config.max_len, config.d_model)  # (max_len, D)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config, causal=self.causal) for _ in range(config.num_layers))
        # pre-norm blocks leave the residual stream un-normalised: normalise once before the head
        self.norm = nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()
        self.head = nn.Linear(config.d_model, config.vocab_size)  # (V, D): a score per token id

    def _check_tokens(self, tokens: object, key_padding_mask: object) -> None:
        require_tensor(tokens, "tokens")
        V, max_len = self.config.vocab_size, self.config.max_len
        if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"tokens must be an integer tensor of token ids, got dtype {tokens.dtype}")
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= max_len:
            raise shape_error("tokens", tokens, f"(B, T) with 1 <= T <= max_len = {max_len}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
            raise ValueError(
                f"tokens must be ids in [0, vocab_size) = [0, {V}), "
                f"got values from {int(tokens.min())} to {int(tokens.max())}"
            )
        if key_padding_mask is not None:
            require_tensor(key_padding_mask, "key_padding_mask")
            if key_padding_mask.dtype != torch.bool or key_padding_mask.shape != tokens.shape:
                raise ValueError(
                    f"key_padding_mask has shape {tuple(key_padding_mask.shape)} and dtype "
                    f"{key_padding_mask.dtype}; expected bool {tuple(tokens.shape)} = (B, T) like tokens, "
                    "True = real token"
                )

    def forward(
        self,
        tokens: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``tokens (B, T)`` -> logits ``(B, T, V)``; with ``return_attention`` also each block's
        attention weights, a list of ``num_layers`` tensors ``(B, H, T, T)``.

        ``key_padding_mask``: optional bool ``(B, T)``, ``True`` = real token.
        """
        self._check_tokens(tokens, key_padding_mask)
        x = self.dropout(self.pos_emb(self.tok_emb(tokens)))  # (B, T) -> (B, T, D), + positions
        attention = []
        for block in self.blocks:
            x, weights = block(x, key_padding_mask)  # (B, T, D), (B, H, T, T)
            attention.append(weights)
        logits = self.head(self.norm(x))  # (B, T, D) -> (B, T, V)
        return (logits, attention) if return_attention else logits


class TransformerEncoder(TransformerLM):
    """BERT-style (Devlin et al., 2019): bidirectional attention, trained to predict masked tokens.

    The logits at position ``t`` are its guess for the token at ``t``; they are used at the
    positions where the input holds a ``[MASK]`` token. Every token sees the whole sequence,
    left and right, so a blank can be filled from context on both sides. Pass a
    ``key_padding_mask`` with padded batches: padding is then never attended to, and the outputs
    at real positions do not depend on how much padding follows.
    """

    causal = False


class TransformerDecoder(TransformerLM):
    """GPT-style (Radford et al., 2018): causal attention, trained to predict the next token.

    The logits at position ``t`` are its guess for the token at ``t + 1``, computed from tokens
    ``0 .. t`` only: changing a later token changes no earlier logits. ``generate`` appends one
    token at a time.
    """

    causal = True

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        *,
        sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``prompt (B, T0)`` by ``max_new_tokens`` tokens, one at a time, left to right.

        Each step runs the model on everything so far and appends the arg-max of the last
        position's logits (greedy, the default) or, with ``sample=True``, a token drawn from
        ``softmax(logits / temperature)`` with ``generator``. No cache: every step recomputes
        the whole prefix, fine at these sizes. ``T0 + max_new_tokens`` must be at most ``max_len``
        (there are no learned positions beyond it). Every row gets exactly ``max_new_tokens``
        tokens; cut each one at its end-of-sequence token yourself.

        Returns:
            ``(B, T0 + max_new_tokens)``: the prompt followed by the new tokens.
        """
        self._check_tokens(prompt, None)
        require_int(max_new_tokens, "max_new_tokens", 0)
        total = prompt.shape[1] + max_new_tokens
        if total > self.config.max_len:
            raise ValueError(
                f"prompt has shape {tuple(prompt.shape)}; with max_new_tokens = {max_new_tokens} the "
                f"result would have {total} tokens; expected at most max_len = {self.config.max_len}"
            )
        was_training = self.training
        self.eval()
        out = prompt
        for _ in range(max_new_tokens):
            logits = self(out)[:, -1]  # (B, T, V) -> (B, V): the guess for the next token
            if sample:
                probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            else:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            out = torch.cat([out, nxt], dim=1)  # (B, T + 1)
        self.train(was_training)
        return out


# --------------------------------------------------------------------------- counting


IGNORE_INDEX = -100  # cross_entropy's ignore_index: target positions that are not predicted


def _check_token_batch(tokens: object, name: str = "tokens", min_len: int = 1) -> torch.Tensor:
    require_tensor(tokens, name)
    if tokens.dim() != 2 or tokens.dtype != torch.long or tokens.shape[1] < min_len:
        raise shape_error(name, tokens, f"(N, T) token ids (torch.long) with T >= {min_len}")
    return tokens


def next_token_batch(tokens: torch.Tensor, pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A GPT's training pair from whole sequences: predict token ``t + 1`` from tokens ``0 .. t``.

    ``inputs = tokens[:, :-1]`` and ``targets = tokens[:, 1:]``: the same sequence shifted by
    one, so the causal model's output at position ``t`` is scored against the token at ``t + 1``.
    Targets equal to ``pad_id`` become ``IGNORE_INDEX`` (the loss skips them).

    Args:
        tokens: ``(N, T)`` token ids, ``T >= 2``.
    Returns:
        ``(inputs, targets)``, both ``(N, T - 1)``.
    """
    _check_token_batch(tokens, min_len=2)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (N, T - 1) each
    if pad_id is not None:
        targets = targets.masked_fill(targets == pad_id, IGNORE_INDEX)
    return inputs, targets


def mask_for_mlm(
    tokens: torch.Tensor,
    maskable: torch.Tensor,
    mask_id: int,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's training input: each maskable token becomes ``mask_id`` with probability ``rate``.

    (BERT also leaves 10% of the chosen tokens unchanged and swaps 10% for random ones; this is
    the plain version.)

    Args:
        tokens: ``(N, T)`` token ids.  maskable: ``(N, T)`` bool, ``False`` for special tokens
        and padding, which are never masked.  rate: in ``(0, 1]``.
    Returns:
        ``(inputs, targets)``, both ``(N, T)``: ``inputs`` with the mask tokens; ``targets`` the
        original id at the masked positions and ``IGNORE_INDEX`` elsewhere.
    """
    _check_token_batch(tokens)
    require_tensor(maskable, "maskable")
    if maskable.dtype != torch.bool or maskable.shape != tokens.shape:
        raise shape_error("maskable", maskable, f"a bool tensor shaped like tokens {tuple(tokens.shape)}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate!r}")
    chosen = maskable & (torch.rand(tokens.shape, generator=generator) < rate)  # (N, T)
    inputs = tokens.masked_fill(chosen, mask_id)  # (N, T)
    targets = tokens.masked_fill(~chosen, IGNORE_INDEX)  # (N, T)
    return inputs, targets


def num_parameters(config: TransformerConfig) -> dict[str, int]:
    """The parameter count of ``TransformerEncoder(config)`` (and of the decoder: the same), by part.

    With ``D = d_model``, ``F = d_ff``, ``V = vocab_size``, ``N = num_layers``::

        embeddings   V*D + max_len*D                      token and position tables
        attention    N * (4*D*D + 4*D)                    W_Q, W_K, W_V, W_O and their biases
        mlp          N * (D*F + F + F*D + D)              fc1 and fc2
        norms        N * 2 * 2*D  (+ 2*D final, pre-norm)  a scale and a shift per LayerNorm
        head         D*V + V

    The number of heads does not appear: more heads means narrower heads, not more weights.
    """
    c = _check_config(config)
    D, F_, V, N = c.d_model, c.d_ff, c.vocab_size, c.num_layers
    parts = {
        "embeddings": V * D + c.max_len * D,
        "attention": N * (4 * D * D + 4 * D),
        "mlp": N * (D * F_ + F_ + F_ * D + D),
        "norms": N * 2 * 2 * D + (2 * D if c.norm_first else 0),
        "head": D * V + V,
    }
    parts["total"] = sum(parts.values())
    return parts
