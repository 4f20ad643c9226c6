"""The chapters' experiments: one module per experiment, named for its topic.

A lab holds what one chapter measures: its synthetic task and data, the small model trained on
it when that model is not a library mechanism, the training run, the measurements and the
chapter's own figures. Labs import the library (``attn_course.<mechanism>``); the library never
imports a lab (``tests/library/test_layering.py`` keeps it so). ``tests/library/test_module_index.py``
checks that the table below names every lab, and nothing else.

===========================  ======  ==============================================================
lab                          chapter what it holds
===========================  ======  ==============================================================
``reversal``                 01, 05  reverse/copy tasks; Seq2Seq training, accuracy by length, alignment
``soft_lookup``              02      1-D regression data, bandwidth sweep, the lookup widget and figures
``score_saturation``         03      softmax saturation and gradients with and without 1/sqrt(d_k)
``softmax_overflow``         04      where the naive softmax overflows
``self_attention_vs_rnn``    06      RNN and CNN layers; path length, sequential depth, FLOPs, time
``head_count``               07      the two-offset copy task; models with 1, 2, 4 heads
``position_ablation``        08      "is it sorted?"; the same model with each position scheme
``mask_leakage``             09      a masked token model; which outputs move when inputs change
``palindrome_lm``            10      palindromes; a BERT-style and a GPT-style model trained on them
``foundations_diagrams``     01-10   Parts I-II's conceptual diagrams
``language_apps``            11      attention pooling, story QA and extractive summaries, each against a baseline
``date_translation``         11      human-written dates into ISO dates: source spans, Seq2Seq with and without attention, alignment
``vision_apps``              12      ViT on digits (vs an MLP and a CNN), attention-pooled parts, a captioner, object queries
``vision_segmentation``      12      "mark the larger of two shapes": a ViT segmenter vs the same model without attention
``speech_recsys_graphs``     13      LAS-style speech, SASRec and graph attention against their baselines; GAT vs GATv2
``applications_diagrams``    11-13   Part III's diagrams: one per application model
``bracket_language``         14-16   a bracket language (Dyck-2) and its rule-checker; a small GPT trained and sampled
``kv_cache_costs``           15      tokens/s with and without a cache; arithmetic intensity, the roofline, the BLAS's threads
``cache_shrinking``          16      cache sizes of real models; MHA/GQA/MQA trained and timed; windows' reach; paging traces
``gpt2_weights``             17      GPT-2's weights found on this machine (never downloaded), loaded, compared with transformers
``inference_diagrams``       14-17   Part IV's diagrams: decoding, prefill, GQA, sliding window, paging
``quadratic_wall``           18      FLOPs counted, peak tensor memory tracked, time by N, one memory pass per score; a 128k context on an H200
``long_range``               19      one far-away signal, many far pairs (pointers); small encoders with a local, Longformer or full mask; time by N
``linear_recall``            20      decoding cost per token (KV cache vs linear state); associative recall without training, with a decayed state
``flash_io``                 21      peak memory of naive vs tiled NumPy attention; HBM traffic; online softmax frames; an H100's memory
``flash_benchmark``          22      the Triton kernels under the interpreter; SDPA backends on a GPU; the recorded H200 run; a tiny model trained with the kernel
``ring``                     23      ring schedule and its step-by-step simulation, torchrun-style processes, communication vs compute
``efficiency_diagrams``      18-23   Part V's diagrams: sparse patterns, block skipping, linear attention (chunkwise), GPU memory, tiles, the GPU running a kernel, the ring
``serving_trace``            24      a seeded trace served by static, continuous and chunked-prefill batching; metrics, Gantt charts, sweeps
``decode_kernels``           25      decode vs prefill intensity, SM occupancy, split-K modelled, paged vs gather bytes and CPU times; diagrams
``draft_and_verify``         26      a target and a 1-layer draft on a bracket stream; greedy and sampled sweeps over k; tokens per target call; the round's diagram
``cache_compression``        27      bytes per token by scheme for real shapes; int8/int4 caches on a trained GPT; key groups; sinks vs window; diagrams
``prefix_sharing``           28      a chat-like trace with shared system prompts and multi-turn conversations; hit rate by capacity; the radix tree drawn
``training``                 all     the optimisation loop the training runs share; ``fit``, its Part III form
===========================  ======  ==============================================================
"""
