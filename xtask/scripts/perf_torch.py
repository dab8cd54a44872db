"""PyTorch reference for `cargo xtask perf`: the UniAD reconstruction transformer, written from
ALGORITHM.md section 3 (not copied from upstream), timed on the CPU with a fixed thread count.

Network: feature jitter (training only), Linear(C_f -> D) input projection, learned row/column
position embedding (section 3.2), post-norm encoder layers (3.3) and decoder layers with per-layer
learned queries attending to the encoder output and to the previous decoder output (3.4), a shared
decoder LayerNorm, Linear(D -> C_f) output projection, MSE reconstruction loss (3.6).

PyTorch's own bf16 CPU path is measured too: inference under
`torch.autocast("cpu", dtype=torch.bfloat16)` (linear layers and attention products in bf16 through
oneDNN, which uses AMX where the CPU has it), reported as "bf16_infer_*"; "bf16_cpu" says whether
torch.ops.mkldnn reports bf16 support on this CPU.

Prints one JSON object on stdout:
  {"train_images_per_s", "infer_images_per_s", "infer_b1_ms", "train_step_s", "infer_batch_s",
   "bf16_infer_images_per_s", "bf16_infer_b1_ms", "threads", "torch_version", "batch", ...}
All times are medians over --runs timed runs after --warmup untimed ones.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


class PositionEmbedding(nn.Module):
    """Section 3.2: pos(h, w) = concat(col[w], row[h]), tables initialised U[0, 1)."""

    def __init__(self, size, dim):
        super().__init__()
        self.h, self.w = size
        self.row_embed = nn.Embedding(self.h, dim // 2)
        self.col_embed = nn.Embedding(self.w, dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self):
        col = self.col_embed.weight.unsqueeze(0).expand(self.h, self.w, -1)
        row = self.row_embed.weight.unsqueeze(1).expand(self.h, self.w, -1)
        return torch.cat([col, row], dim=-1).reshape(self.h * self.w, -1)  # [N, D]


class EncoderLayer(nn.Module):
    """Section 3.3, post-norm: q = k = X + P, v = X."""

    def __init__(self, d, heads, ff, p):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=p)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(p)
        self.drop1 = nn.Dropout(p)
        self.drop2 = nn.Dropout(p)

    def forward(self, x, pos):  # x [N, B, D], pos [N, 1, D]
        qk = x + pos
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x, need_weights=False)[0]))
        ffn = self.linear2(self.drop(torch.relu(self.linear1(x))))
        return self.norm2(x + self.drop2(ffn))


class DecoderLayer(nn.Module):
    """Section 3.4: T = Q_l; attend to M, then to O_{l-1}; FFN; three post-norms."""

    def __init__(self, n, d, heads, ff, p):
        super().__init__()
        self.learned_embed = nn.Parameter(torch.randn(n, 1, d))
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=p)
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=p)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.drop = nn.Dropout(p)
        self.drop1 = nn.Dropout(p)
        self.drop2 = nn.Dropout(p)
        self.drop3 = nn.Dropout(p)

    def forward(self, memory, prev, pos):
        b = memory.shape[1]
        t = self.learned_embed.expand(-1, b, -1)
        a = self.self_attn(t + pos, memory + pos, memory, need_weights=False)[0]
        t = self.norm1(t + self.drop1(a))
        a = self.multihead_attn(t + pos, prev + pos, prev, need_weights=False)[0]
        t = self.norm2(t + self.drop2(a))
        ffn = self.linear2(self.drop(torch.relu(self.linear1(t))))
        return self.norm3(t + self.drop3(ffn))


class UniAD(nn.Module):
    def __init__(self, c=272, d=256, heads=8, enc=4, dec=4, ff=1024, p=0.1, size=(14, 14)):
        super().__init__()
        n = size[0] * size[1]
        self.c = c
        self.input_proj = nn.Linear(c, d)
        self.output_proj = nn.Linear(d, c)
        self.pos_embed = PositionEmbedding(size, d)
        self.encoder = nn.ModuleList([EncoderLayer(d, heads, ff, p) for _ in range(enc)])
        self.decoder = nn.ModuleList([DecoderLayer(n, d, heads, ff, p) for _ in range(dec)])
        self.decoder_norm = nn.LayerNorm(d)
        for m in self.modules():  # section 3.7
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feature_align):  # [B, C, H, W]
        b, c, h, w = feature_align.shape
        tokens = feature_align.flatten(2).permute(2, 0, 1)  # [N, B, C]
        if self.training:  # section 3.1: jitter scale 20, probability 1
            norm = tokens.norm(dim=2, keepdim=True)
            tokens = tokens + torch.randn_like(tokens) * (20.0 * norm / c)
        pos = self.pos_embed().unsqueeze(1)
        x = self.input_proj(tokens)
        for layer in self.encoder:
            x = layer(x, pos)
        out = x
        intermediate = []
        for layer in self.decoder:
            out = layer(x, out, pos)
            intermediate.append(self.decoder_norm(out))
        rec = self.output_proj(intermediate[-1])  # [N, B, C]
        return rec.permute(1, 2, 0).reshape(b, c, h, w)


def median_time(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--channels", type=int, default=272)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UniAD(c=args.channels)
    x = torch.rand(args.batch, args.channels, 14, 14)
    x1 = x[:1].clone()

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), x)
        loss.backward()

    def infer(inp, bf16=False):
        def run():
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(inp)

        return run

    train_s = median_time(train_step, args.warmup, args.runs)
    infer_s = median_time(infer(x), args.warmup, args.runs)
    infer_b1_s = median_time(infer(x1), args.warmup, max(args.runs, 15))
    bf16_s = median_time(infer(x, True), args.warmup, args.runs)
    bf16_b1_s = median_time(infer(x1, True), args.warmup, max(args.runs, 15))
    bf16_cpu = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    print(
        json.dumps(
            {
                "torch_version": torch.__version__,
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "runs": args.runs,
                "train_step_s": train_s,
                "infer_batch_s": infer_s,
                "infer_b1_ms": infer_b1_s * 1e3,
                "train_images_per_s": args.batch / train_s,
                "infer_images_per_s": args.batch / infer_s,
                "bf16_infer_batch_s": bf16_s,
                "bf16_infer_images_per_s": args.batch / bf16_s,
                "bf16_infer_b1_ms": bf16_b1_s * 1e3,
                "bf16_cpu": bf16_cpu,
            }
        )
    )


if __name__ == "__main__":
    main()
