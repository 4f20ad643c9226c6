"""Exercise 5: a Transformer block, and the inputs and outputs of BERT and GPT (practises chapter 10).

Tasks:
    pre_norm_block(x, params, num_heads, causal)        x + MHA(LN1(x)), then + MLP(LN2(.)); -> (B, T, D)
        params: a TransformerBlock's state_dict (plain tensors), e.g. params["attn.q_proj.weight"]
    mask_for_mlm(tokens, maskable, mask_id, rate, uniform)   -> (inputs, targets), BERT-style masking
        deterministic: position chosen where maskable and uniform < rate
    next_token_batch(tokens, pad_id)                    -> (inputs, targets), the GPT shift by one
    greedy_generate(model, prompt, max_new_tokens)      -> (B, T0 + max_new_tokens), arg-max decoding
        ``model`` is a function tokens (B, T) -> logits (B, T, V); the grader passes a small
        deterministic one (``grading.fixtures.TableLM``) built inside the notebook's kernel

References: ``transformer.TransformerBlock`` (norm_first=True), ``transformer.next_token_batch``,
and for the other two functions written here from the same rule as the library's
(``transformer.mask_for_mlm`` draws its own uniforms; ``TransformerDecoder.generate`` is a
method); tests check that they agree with the library.

Dimension glossary: B/N batch, T sequence length, D d_model, H heads, F d_ff, V vocabulary.
"""

from __future__ import annotations

import torch

from .. import transformer
from ..grading.fixtures import fixture
from ..grading.tasks import Case, Exercise, Task, randn
from ..transformer import IGNORE_INDEX, TransformerBlock, TransformerConfig

_ATTENTIONS = ("attn_course.transformer.TransformerBlock.forward", "attn_course.multihead.MultiHeadAttention.forward",
               "attn_course.attention.scaled_dot_product_attention", "attn_course.attention.attention_weights_unchecked",
               "torch.nn.functional.scaled_dot_product_attention",
               "torch.nn.functional.multi_head_attention_forward", "torch.nn.MultiheadAttention.forward",
               "torch.nn.TransformerEncoderLayer.forward")


# --------------------------------------------------------------------------- references


def block_from_params(params: dict[str, torch.Tensor], num_heads: int, causal: bool) -> TransformerBlock:
    """A pre-norm ``TransformerBlock`` holding ``params`` (its state_dict), in eval mode."""
    D, F_ = params["norm1.weight"].shape[0], params["mlp.fc1.weight"].shape[0]
    config = TransformerConfig(vocab_size=1, max_len=1, d_model=D, num_heads=num_heads, d_ff=F_, norm_first=True)
    block = TransformerBlock(config, causal=causal).to(params["norm1.weight"].dtype)
    block.load_state_dict(params)
    return block.eval()


def pre_norm_block_reference(x, params, num_heads, causal):
    with torch.no_grad():
        return block_from_params(params, num_heads, causal)(x)[0]  # (B, T, D)


def mask_for_mlm_reference(tokens, maskable, mask_id, rate, uniform):
    """``transformer.mask_for_mlm`` with its uniform draws given (``uniform (N, T)`` in [0, 1))."""
    chosen = maskable & (uniform < rate)  # (N, T)
    return tokens.masked_fill(chosen, mask_id), tokens.masked_fill(~chosen, IGNORE_INDEX)


def next_token_batch_reference(tokens, pad_id=None):
    return transformer.next_token_batch(tokens, pad_id)


def greedy_generate_reference(model, prompt, max_new_tokens):
    """``TransformerDecoder.generate`` (greedy) for any ``model: tokens (B, T) -> logits (B, T, V)``."""
    out = prompt
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = model(out)[:, -1].argmax(dim=-1, keepdim=True)  # (B, T, V) -> (B, V) -> (B, 1)
            out = torch.cat([out, nxt], dim=1)  # (B, T + 1)
    return out


# --------------------------------------------------------------------------- cases


def random_params(g: torch.Generator, D: int, F_: int) -> dict[str, torch.Tensor]:
    """A TransformerBlock state_dict with random weights, LayerNorm scales and shifts included."""
    p = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        p[f"attn.{name}.weight"] = randn(g, D, D, scale=D ** -0.5)
        p[f"attn.{name}.bias"] = randn(g, D, scale=0.1)
    p["mlp.fc1.weight"], p["mlp.fc1.bias"] = randn(g, F_, D, scale=D ** -0.5), randn(g, F_, scale=0.1)
    p["mlp.fc2.weight"], p["mlp.fc2.bias"] = randn(g, D, F_, scale=F_ ** -0.5), randn(g, D, scale=0.1)
    for n in ("norm1", "norm2"):
        p[f"{n}.weight"], p[f"{n}.bias"] = 1 + randn(g, D, scale=0.3), randn(g, D, scale=0.3)
    return p


def _block_cases(g: torch.Generator) -> list[Case]:
    return [
        Case("one head, encoder", (randn(g, 2, 4, 8), random_params(g, 8, 32), 1, False),
             hint="One head, no mask: the order of norm, attention and residual, or the MLP, differ."),
        Case("2 heads, decoder (causal)", (randn(g, 2, 5, 8), random_params(g, 8, 16), 2, True),
             hint="2 heads of width d = 4 in a model of width D = 8, and causal: token t may attend to "
                  "tokens 0 .. t only."),
        Case("4 heads, encoder", (randn(g, 3, 6, 16), random_params(g, 16, 24), 4, False),
             hint="4 heads: head h owns features h*d .. (h+1)*d - 1 of every token."),
        Case("one token, causal", (randn(g, 1, 1, 8), random_params(g, 8, 8), 2, True)),
        Case("inputs far from zero mean", (3 + randn(g, 2, 4, 8, scale=4.0), random_params(g, 8, 32), 2, True),
             hint="Inputs with mean 3 and spread 4: LayerNorm's details (which variance, where eps goes) "
                  "and which tensor the residual adds show here."),
    ]


def _mlm_cases(g: torch.Generator) -> list[Case]:
    def tokens(N: int, T: int) -> torch.Tensor:
        return torch.randint(4, 20, (N, T), generator=g)

    def uniform(N: int, T: int) -> torch.Tensor:
        return torch.rand(N, T, generator=g)

    special = torch.ones(2, 8, dtype=torch.bool)
    special[:, 0] = special[:, -1] = False  # [CLS] ... [SEP]
    special[1, 5:] = False  # padding
    tied = torch.full((2, 6), 0.5)
    tied[0, :3] = torch.tensor([0.1, 0.5, 0.9])
    return [
        Case("rate 0.15", (tokens(3, 10), torch.ones(3, 10, dtype=torch.bool), 3, 0.15, uniform(3, 10)),
             hint="Inputs: mask_id at the chosen positions. Targets: the original token there, -100 elsewhere."),
        Case("special tokens and padding are never masked", (tokens(2, 8), special, 3, 0.5,
                                                            uniform(2, 8) * 0.3),
             hint="[CLS], [SEP] and padding are not maskable: they keep their token and get target -100, "
                  "whatever their draw."),
        Case("rate 1: every maskable token", (tokens(2, 5), torch.rand(2, 5, generator=g) < 0.7, 1, 1.0,
                                              uniform(2, 5))),
        Case("nothing maskable", (tokens(2, 4), torch.zeros(2, 4, dtype=torch.bool), 1, 0.5, uniform(2, 4)),
             hint="With nothing chosen, inputs == tokens and every target is IGNORE_INDEX (-100)."),
        Case("uniform equal to the rate", (tokens(2, 6), torch.ones(2, 6, dtype=torch.bool), 2, 0.5, tied),
             hint="Some draws equal the rate exactly: a position is chosen only when its draw is strictly "
                  "below the rate."),
    ]


def _shift_cases(g: torch.Generator) -> list[Case]:
    padded = torch.randint(3, 9, (3, 7), generator=g)
    padded[0, 5:] = 0
    padded[2, 3:] = 0
    return [
        Case("no pad_id", (torch.randint(0, 9, (2, 6), generator=g), None),
             hint="The target at position t is the token at t + 1: both results are one token shorter."),
        Case("padded targets are ignored", (padded, 0),
             hint="Targets equal to pad_id become IGNORE_INDEX (-100); the inputs keep their pad tokens."),
        Case("T = 2", (torch.randint(1, 9, (4, 2), generator=g), 0)),
        Case("a pad_id that never occurs", (torch.randint(1, 9, (2, 5), generator=g), 11)),
    ]


def _lm(g: torch.Generator, V: int, max_len: int) -> dict:
    return fixture("table_lm", table=torch.randn(V, V, generator=g), mix=0.7 * torch.randn(V, V, generator=g),
                   pos=torch.randn(max_len, V, generator=g))


def _generate_cases(g: torch.Generator) -> list[Case]:
    def prompt(B: int, T: int, V: int) -> torch.Tensor:
        return torch.randint(0, V, (B, T), generator=g)

    return [
        Case("one sequence", (_lm(g, 7, 12), prompt(1, 3, 7), 4),
             hint="This model's next-token logits depend on the whole prefix and its positions, not only "
                  "on the last token."),
        Case("a batch", (_lm(g, 9, 12), prompt(3, 2, 9), 6),
             hint="3 rows generated together: each row picks its own next token, from its own logits."),
        Case("a one-token prompt", (_lm(g, 5, 8), prompt(2, 1, 5), 5)),
        Case("no new tokens", (_lm(g, 6, 8), prompt(2, 4, 6), 0), hint="max_new_tokens = 0 returns the prompt."),
        Case("up to max_len", (_lm(g, 6, 6), prompt(2, 2, 6), 4),
             hint="Stop after max_new_tokens: the model refuses sequences longer than its max_len."),
    ]


EXERCISE = Exercise(
    id="ex05_transformer_block",
    title="A Transformer block, BERT's inputs and GPT's outputs",
    tasks=(
        Task("pre_norm_block", pre_norm_block_reference, _block_cases, points=3,
             arg_names=("x", "params", "num_heads", "causal"), forbidden=_ATTENTIONS,
             hint="Draw the pre-norm block from the chapter: two sub-layers, each 'normalise, transform, add "
                  "back'. Write LayerNorm, the multi-head attention of exercise 3 (with biases, and the "
                  "causal mask when asked) and the MLP as small functions of params, then chain them; "
                  "params' keys name which weight goes where."),
        Task("mask_for_mlm", mask_for_mlm_reference, _mlm_cases, points=2,
             arg_names=("tokens", "maskable", "mask_id", "rate", "uniform"),
             forbidden=("attn_course.transformer.mask_for_mlm",),
             hint="First one boolean (N, T) tensor: which positions are chosen (two conditions). Then both "
                  "results follow from it, each a copy of tokens with some positions replaced."),
        Task("next_token_batch", next_token_batch_reference, _shift_cases, points=1,
             arg_names=("tokens", "pad_id"), forbidden=("attn_course.transformer.next_token_batch",),
             hint="Write the pair for one sequence of 4 tokens by hand: which slice is the input, which the "
                  "target? Then the targets that are padding: replace them without writing into tokens."),
        Task("greedy_generate", greedy_generate_reference, _generate_cases, points=2,
             arg_names=("model", "prompt", "max_new_tokens"),
             forbidden=("attn_course.transformer.TransformerDecoder.generate",),
             hint="A loop of max_new_tokens steps; in each: what does the model see, which position's logits "
                  "predict the next token, and how does the new token join the sequence?"),
    ),
)
