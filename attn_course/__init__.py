"""attn_course: the code behind the attention-mechanisms course.

One module per concept; the chapters and exercises import from here.

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
