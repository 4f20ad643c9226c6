"""attn_course: the code behind the attention-mechanisms course.

The package has two layers, plus the exercise system:

* **The attention library**, at the top level: one module per mechanism, named for it, the
  code a reader of the papers would recognise. Parts I-II: ``scoring`` (dot, scaled, general,
  additive scores), ``masking`` (masks and the masked softmax), ``attention`` (scaled dot-product
  attention), ``lookup`` (attention as Nadaraya-Watson kernel regression), ``combine`` (context +
  decoder state), ``seq2seq`` (GRU encoder-decoder with fixed-context, Bahdanau and Luong
  decoders), ``self_attention``, ``multihead``, ``positional`` (sinusoidal, learned, RoPE,
  ALiBi), ``transformer`` (the block, encoder and decoder language models, the next-token shift,
  BERT's input masking). Part IV: ``gpt`` (a GPT-2-architecture model and the GPT-2
  loader), ``decoding`` (the generation loop, sampling filters, prefix sharing), ``kv_cache`` (dynamic, static, sliding-window and paged caches), ``gqa``
  (grouped-query attention), ``prepack`` (oneDNN-prepacked linear layers: decoding at the
  memory's speed on a CPU). Part V: ``flash`` (online softmax, tiled attention, memory
  traffic), ``triton_warmup`` (two first Triton kernels: vector add, fused row softmax),
  ``triton_attention`` (FlashAttention-2 forward and backward kernels in Triton, differentiable),
  ``flash_backward`` (the backward by recomputation, in torch), ``sparse``,
  ``linear``, ``ring_attention``. Part VI: ``scheduler`` (static and continuous batching, chunked
  prefill, preemption over a block pool), ``decode_attention`` (split-K decoding, paged decode
  through the block table, in torch), ``triton_decode`` (their Triton kernels), ``speculative``
  (draft and verify), ``mla`` (multi-head latent attention), ``kv_quant`` (int8 and int4 KV
  caches), ``attention_sinks`` (StreamingLLM's cache), ``prefix_cache`` (a radix tree of cached
  prefixes, SGLang's RadixAttention).
  ``apps/`` holds Part III's application models,
  one module per field (text, vision, speech, recsys, graphs). Helpers: ``_validation`` (input
  validation, public names), ``plotting`` (figure helpers several chapters share), ``diagrams``
  (the drawing kit every part's diagrams use; the diagrams themselves are labs), ``interactive`` (kernel-free slider figures),
  ``utils`` (seeding, threads, ``show_source``).
* **The chapters' experiments**, in ``attn_course.labs``: one module per experiment, named for
  its topic (task, data, training run, measurements, the chapter's own figures). A library
  module never imports a lab; ``tests/library/test_layering.py`` checks it.
* **The exercise system**: ``check`` (instant feedback in a notebook), ``grading/`` (the
  grader and the learner-notebook builder), ``exercises/`` (task definitions), ``cli``.

A new chapter puts its mechanism in a library module (or extends one) and its experiment in
``labs/<topic>.py``; its notebook imports the library and, mostly, its own lab.

Shape convention (used everywhere, documented once here)
--------------------------------------------------------
Attention tensors are ``(batch, heads, seq, head_dim)``, abbreviated in comments as::

    B   batch size
    H   number of heads
    L   query length (target sequence)
    S   key/value length (source sequence); L == S for self-attention
    T   sequence length when there is only one (self-attention, RNNs)
    D   model width (embed_dim);  d = D // H is head_dim
    d_k key/query width per head, d_v value width per head
    V   vocabulary size

Functions that do not care about heads accept any leading batch dimensions:
``(..., L, d_k)`` for queries, ``(..., S, d_k)`` for keys, ``(..., S, d_v)`` for values.
Boolean masks follow one rule throughout: ``True`` means "may attend".

Public functions validate their inputs and raise ``ValueError``/``TypeError`` messages
that name the argument, the shape received and the shape expected.
"""

__version__ = "0.1.0"
