"""Application models: attention across fields (Part III), one module per field.

Each module builds its models from the library's attention modules (never a new copy of
attention) and holds the field's synthetic data generators; the chapters' experiments that
train and measure them live in ``attn_course.labs``.

* ``text``: attention pooling, a one-hop memory network over stories, attention over sentences.
* ``vision``: patch embedding and a tiny ViT (loads timm weights), attention-pooled CNN,
  spatial-attention captioner, DETR-style object queries with Hungarian matching.
* ``speech``: a LAS-style listener for the library's seq2seq decoders (a Bahdanau speller).
* ``recsys``: SASRec next-item model and its popularity / last-item baselines.
* ``graphs``: graph attention, GAT and GATv2 (match torch_geometric's GATConv and GATv2Conv), and
  mean / GCN aggregation; the DictionaryLookup task that needs GATv2's dynamic attention.

Optional packages (scikit-learn for the digits, scipy for the matching) are imported only inside
the functions that need them, with an error that names the pip package.
"""
