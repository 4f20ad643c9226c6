"""Generation speed with and without a KV cache, against Hugging Face transformers' GPT-2, same run.

    PYTHONPATH=. .venv/bin/python benchmarks/kv_cache.py [--lengths 128 256 512] [--prompts 16 512]
                                                        [--threads 2] [--no-uncached] [--no-hf]

Model: GPT-2 small's shape (12 layers, 12 heads, D = 768, V = 50257, context 1024) with random
weights (no download), float32, batch 1. The same weights are loaded into
``attn_course.gpt.GPT`` and into ``transformers.GPT2LMHeadModel``; greedy decoding, so every
row of one (prompt, length) should produce the same tokens (last column).

Rows, for each prompt length and number of generated tokens:

* ``uncached``   ``generate(cache=None)``: the whole sequence is recomputed every step
                 (logits for the last position only: the strongest baseline without a cache).
* ``hf``         ``GPT2LMHeadModel.generate(do_sample=False)``, with its own cache, as shipped.
* ``dynamic``    ``generate(cache="dynamic")``: K/V concatenated every step.
* ``static``     ``generate(cache="static")``: preallocated K/V written in place.
* ``static-nn``  the same as ``static`` on a copy of the model with plain ``nn.Linear`` layers.

Our ``uncached``, ``dynamic`` and ``static`` rows run one model whose linear layers were
prepacked for oneDNN (``attn_course.prepack``): decode is a chain of matrix-vector products
that must stream all 495 MB of weights per token, and a prepacked GEMV reads them with every
core, where the stock fp32 GEMV runs on one. ``static-nn`` shows what the cache alone gives
(the same kernels as transformers); ``static`` adds the faster weight reads.

Columns: tokens/s over the whole call; prefill ms for the prompt (measured alone) and per
prompt token; decode ms per token ((total - prefill) / (new - 1)); decode's effective memory
bandwidth (every decode step reads all the weights -- the tied 38.6M-entry embedding as the
output layer -- and the whole cache, so bytes/token / decode time is a lower bound on the
bandwidth it used), next to the machine's read bandwidth (a large ``sum``) and copy bandwidth
(a large copy, read + write), measured in the same run. Timings are the best of ``--repeat``
runs (uncached: one); on a machine shared with other jobs they are noisy.

Why the cache's speed-up depends on the prompt: uncached, token ``t`` costs ~2 x 85M x t FLOPs
(compute-bound); cached, it reads ~495 MB (memory-bound). The ratio is therefore about
``0.34 x t x (bandwidth / FLOP/s)``: linear in the context, and set by the machine's balance.

Measured 2026-11-30 on our 2-core machine, idle (AMD EPYC with AVX-512, torch 2.13.0 CPU,
transformers 5.24, ``--threads 2``; read bandwidth 44.6 GB/s, copy 41.6 GB/s), tokens/s:

    prompt  new  uncached  hf    dynamic  static  static-nn   static/uncached  static/hf  static/dynamic
    16      128  19.2      33.3  59.4     55.7    32.7        2.9x             1.67       0.94
    16      256  11.3      29.6  47.4     47.1    30.5        4.2x             1.59       0.99
    16      512   5.9      27.4  44.2     59.2    31.3        10.1x            2.16       1.34
    512     128   2.7      22.5  35.1     42.0    26.6        15.7x            1.87       1.20
    512     256   2.3      22.3  32.8     37.2    25.9        15.9x            1.67       1.13
    512     512   1.9      25.8  40.5     51.6    29.3        26.8x            2.00       1.27

Prefill per prompt token (512-token prompt): 0.60 ms ours, 1.07 ms with plain ``nn.Linear``,
1.68 ms transformers; decode 17-29 ms per token ours (18-30 GB/s of weights and cache), 30-42
ms for ``static-nn`` and transformers (13-17 GB/s); every generation gave the same tokens.
Repeated runs move single rows by up to ~20 % (a shared virtual machine); a second run the
same day gave, at 512 new tokens, static/uncached 8.9x (prompt 16) and 26.2x (prompt 512),
static/hf 1.76 and 2.03, static/dynamic 1.11 and 1.27, static-nn/hf 1.05 and 1.23.

Against the issue's targets at 512 generated tokens: after a 512-token prompt (GPT-2's whole
1024-token context) the cache gives 26.8x the uncached tokens/s (>= 15x), cached decode is
2.0x transformers (>= 1.1x; ``static-nn``, the cache with transformers' kernels, is at
1.0-1.2x), and the static cache is not slower than the growing one (1.27x). After a 16-token
prompt the cache gives 10x. 15x there would need a decode step of 11.4 ms (the uncached run's
171 ms per token / 15): reading all 495 MB of weights at 43 GB/s and doing nothing else, on a
machine that reads at most 44.6 GB/s. The speed-up grows with the context, as above.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform

import torch
from tqdm.auto import tqdm

from attn_course.decoding import generate
from attn_course.gpt import GPT, GPTConfig, load_gpt2_state_dict
from attn_course.kv_cache import kv_cache_bytes
from attn_course.prepack import prepack_linears
from attn_course.utils import best_seconds

TARGETS = (("static / uncached", "static", "uncached", 15.0), ("static / hf", "static", "hf", 1.1),
           ("static / dynamic", "static", "dynamic", 1.0))


def bandwidths(device: torch.device, mbytes: int = 512, repeat: int = 5) -> tuple[float, float]:
    """GB/s of reading ``mbytes`` MB (``sum``) and of copying them (read + write counted)."""
    src = torch.randn(mbytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)

    def timed(fn) -> float:
        def run():
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return best_seconds(run, repeat)  # after one warm-up

    nbytes = src.numel() * 4
    return nbytes / timed(src.sum) / 1e9, 2 * nbytes / timed(lambda: dst.copy_(src)) / 1e9


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face's GPT-2 names, Conv1D layout (in, out)."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("attn.qkv", "attn.c_attn").replace("attn.out", "attn.c_proj")
        if k.startswith("h.") and k.endswith("weight") and ("attn" in k or "mlp" in k):
            v = v.t().contiguous()
        out["lm_head.weight" if k == "lm_head.weight" else f"transformer.{k}"] = v
    return out


def build_hf(model: GPT, device: torch.device):
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = model.config
    hf_cfg = transformers.GPT2Config(n_positions=cfg.context_length, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                                     n_head=cfg.n_head, vocab_size=cfg.vocab_size)
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(hf_cfg)
    hf.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    hf.tie_weights()
    hf = hf.to(device).eval()
    print(f"transformers {transformers.__version__}, attention {hf.config._attn_implementation}")
    # sanity: the loader goes the other way and gives the same model
    assert torch.equal(load_gpt2_state_dict(hf_state_dict(model)).h[0].attn.qkv.weight.cpu(),
                       model.h[0].attn.qkv.weight.cpu())
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512], help="tokens to generate")
    ap.add_argument("--prompts", type=int, nargs="+", default=[16, 512], help="prompt lengths")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs (uncached: 1)")
    ap.add_argument("--no-uncached", action="store_true", help="skip the slow uncached rows")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"device: {device} ({name}), {cores} cores visible, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")

    cfg = GPTConfig(context_length=max(1024, max(args.prompts) + max(args.lengths)))
    torch.manual_seed(0)
    stock = GPT(cfg).to(device).eval()  # plain nn.Linear layers
    model = copy.deepcopy(stock)
    packed = prepack_linears(model) if device.type == "cpu" else 0
    print(f"prepacked linear layers: {packed}" + ("" if packed else " (none: rows 'static' and 'static-nn' agree)"))
    hf = None if args.no_hf else build_hf(stock, device)

    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("wpe"))
    weight_bytes = params * 4  # float32; the position table is read one row at a time
    read_bw, copy_bw = bandwidths(device)
    print(f"weights read per decode step: {weight_bytes / 1e6:.0f} MB; "
          f"KV cache per token: {kv_cache_bytes(12, 12, 64, 1, dtype_bytes=4) / 1e3:.1f} kB (float32)")
    print(f"machine bandwidth: read {read_bw:.1f} GB/s, copy (read + write) {copy_bw:.1f} GB/s\n")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def prefill_time(forward) -> float:
        """Seconds of one forward pass over the prompt, best of 3 after a warm-up."""
        def run():
            with torch.inference_mode():
                forward()
            sync()
        return best_seconds(run, 3)

    def our_prefill_time(net: GPT, prompt: torch.Tensor, kind: str | None) -> float:
        def forward():
            cache = None if kind is None else net.new_cache(kind, 1, prompt.shape[1] + 1)
            net(prompt, cache, last_only=True)
        return prefill_time(forward)

    methods = ("uncached", "hf", "dynamic", "static", "static-nn")
    header = (f"{'prompt':>6} {'new':>4} {'method':>9} {'tok/s':>7} {'prefill ms':>10} {'ms/prompt tok':>13} "
              f"{'decode ms/tok':>13} {'decode GB/s':>11} {'vs uncached':>11} {'vs hf':>6}  same tokens")
    print(header)
    print("-" * len(header))
    # Per (prompt, length): the two baselines first, so every row prints its ratios as soon as it is measured.
    results: dict[tuple[int, int, str], float] = {}
    for P in args.prompts:
        prompt = torch.randint(0, cfg.vocab_size, (1, P), generator=torch.Generator().manual_seed(0)).to(device)
        prefill = {"uncached": our_prefill_time(model, prompt, None),
                   "dynamic": our_prefill_time(model, prompt, "dynamic"),
                   "static": our_prefill_time(model, prompt, "static"),
                   "static-nn": our_prefill_time(stock, prompt, "static")}
        if hf is not None:
            prefill["hf"] = prefill_time(lambda prompt=prompt: hf(prompt, use_cache=True))
        jobs = [(n, m) for n in args.lengths for m in methods
                if not (m == "uncached" and args.no_uncached) and not (m == "hf" and hf is None)]
        first: dict[int, torch.Tensor] = {}
        for n, method in tqdm(jobs, desc=f"prompt {P}", leave=False):
            def run(n=n, method=method, prompt=prompt):
                if method == "hf":
                    out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)
                elif method == "static-nn":
                    out = generate(stock, prompt, n, cache="static")
                else:
                    out = generate(model, prompt, n, cache=None if method == "uncached" else method)
                sync()
                return out
            if method != "uncached":
                run(n=min(n, 8))  # warm-up
            outs = []
            t = best_seconds(lambda outs=outs, run=run: outs.append(run()), 1 if method == "uncached" else args.repeat,
                             warmup=False)
            out = outs[-1]
            tps = results[P, n, method] = n / t
            first.setdefault(n, out.cpu())
            decode = (t - prefill[method]) / max(1, n - 1)
            cache_read = kv_cache_bytes(12, 12, 64, P + n // 2, dtype_bytes=4)  # the average cache
            bw = (weight_bytes + cache_read) / decode / 1e9 if method != "uncached" else float("nan")
            ratio = {b: tps / results[P, n, b] if (P, n, b) in results else float("nan") for b in ("uncached", "hf")}
            tqdm.write(f"{P:>6} {n:>4} {method:>9} {tps:>7.1f} {prefill[method] * 1e3:>10.1f} "
                       f"{prefill[method] * 1e3 / P:>13.3f} {decode * 1e3:>13.2f} {bw:>11.1f} "
                       f"{ratio['uncached']:>11.1f} {ratio['hf']:>6.2f}  {torch.equal(out.cpu(), first[n])}")

    n = max(args.lengths)
    print(f"\nat {n} new tokens (tokens/s ratios; the issue's targets on the right):")
    for P in args.prompts:
        for label, a, b, target in TARGETS + (("static-nn / hf", "static-nn", "hf", None),):
            if (P, n, a) in results and (P, n, b) in results:
                r = results[P, n, a] / results[P, n, b]
                verdict = "" if target is None else f">= {target:<4}  {'met' if r >= target else 'NOT met'}"
                print(f"  prompt {P:>4}  {label:<18} {r:6.2f}   {verdict}")
    print("\nratios are tokens/s divided by the uncached / hf / dynamic row of the same prompt and length;")
    print("decode GB/s = (weights + average cache) bytes per decode step / decode time per token.")


if __name__ == "__main__":
    main()
