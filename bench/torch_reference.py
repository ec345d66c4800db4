"""PyTorch eager reference for the CPU benchmark: the same model, data, batch, optimizer,
schedule and threads as bench/jobs/shakespeare-dense.yaml run by frugal-trainer.

GPT-2 style (nanoGPT's model.py): learned positions, biases, tied embeddings, pre-norm, GELU,
no dropout; byte-level tokens (vocabulary 257) of tinyshakespeare, the last 10% held out;
AdamW (betas 0.9/0.99, weight decay 0.1 on 2-D weights), cosine schedule with 100 warm-up steps
to 10% of the peak, gradient clip 1.0. Validation loss is the mean over non-overlapping windows
of the held-out text, as the trainer computes it.

Usage: python bench/torch_reference.py --data data/tinyshakespeare.txt --steps 2000
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, hidden)
        self.fc_proj = nn.Linear(hidden, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, seq_len, layers, d, heads, hidden):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, hidden) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.apply(self._init)
        for b in self.blocks:
            for p in (b.proj.weight, b.fc_proj.weight):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.wte.weight).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def lr_at(step, total, lr, min_lr, warmup):
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    ratio = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: CUDA autocast, PyTorch's usual eager mixed precision")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = torch.frombuffer(bytearray(open(args.data, "rb").read()), dtype=torch.uint8).long()
    split = round(len(data) * 0.9)
    train, val = data[:split], data[split:]
    t = args.seq_len
    model = GPT(257, t, args.layers, args.d_model, args.heads, 4 * args.d_model).to(dev)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.99), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(args.seed)

    def batch():
        ix = torch.randint(len(train) - t - 1, (args.batch,), generator=gen)
        rows = torch.stack([train[i : i + t + 1] for i in ix.tolist()])
        rows = rows.to(dev)
        return rows[:, :-1], rows[:, 1:]

    train_seconds = 0.0
    loss_value = float("nan")
    for step in range(args.steps):
        t0 = time.perf_counter()
        lr = lr_at(step, args.steps, args.lr, args.lr / 10, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch()
        with autocast:
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()  # also synchronises a GPU, so the step time is real
        train_seconds += time.perf_counter() - t0
        if (step + 1) % 500 == 0:
            print(json.dumps({"event": "step", "step": step + 1, "loss": loss_value,
                              "tokens_per_second": (step + 1) * args.batch * t / train_seconds}), flush=True)

    model.eval()
    n = (len(val) - 1) // t
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 64):
            rows = torch.stack([val[j * t : j * t + t + 1] for j in range(i, min(n, i + 64))]).to(dev)
            with autocast:
                total += model(rows[:, :-1], rows[:, 1:]).item() * rows.shape[0]
            count += rows.shape[0]
    print(json.dumps({
        "event": "summary", "impl": "pytorch-eager", "torch": torch.__version__, "threads": args.threads,
        "params_total": params, "device": args.device, "dtype": args.dtype, "steps": args.steps, "train_seconds": train_seconds,
        "tokens_per_second": args.steps * args.batch * t / train_seconds,
        "train_loss": loss_value, "val_loss": total / count,
    }), flush=True)


if __name__ == "__main__":
    main()
