"""PyTorch CPU reference: a small byte-level GPT trained on a plain text file.

This is the comparison point for the JAX benchmark. It trains the classic
"baby GPT on CPU" configuration (4 layers, 4 heads, width 128, context 64)
on the bytes of a text file and reports throughput and validation loss.

    python bench/torch_reference.py --text /path/to/tinyshakespeare.txt \
        --out bench/results/torch_reference.json

The vocabulary is the 256 byte values, so the numbers line up with a
byte-vocabulary JAX model. Loss is mean cross-entropy in nats over every
position of every window.
"""

import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB_SIZE = 256
NUM_LAYERS = 4
NUM_HEADS = 4
WIDTH = 128
CONTEXT = 64

PEAK_LR = 1e-3
FINAL_LR = 1e-4
WARMUP_STEPS = 100
BETAS = (0.9, 0.99)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0

WARMUP_STEPS_NOT_TIMED = 10
EVAL_SEED = 1234


class SelfAttention(nn.Module):

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.proj = nn.Linear(WIDTH, WIDTH, bias=False)

    def forward(self, x):
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).split(WIDTH, dim=-1)
        # [batch, length, width] -> [batch, heads, length, head_dim]
        q, k, v = (
            t.view(batch, length, NUM_HEADS, WIDTH // NUM_HEADS).transpose(1, 2)
            for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        attended = attended.transpose(1, 2).reshape(batch, length, WIDTH)
        return self.proj(attended)


class Block(nn.Module):

    def __init__(self):
        super().__init__()
        self.attention_norm = nn.LayerNorm(WIDTH, bias=False)
        self.attention = SelfAttention()
        self.mlp_norm = nn.LayerNorm(WIDTH, bias=False)
        self.mlp_in = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.mlp_out = nn.Linear(4 * WIDTH, WIDTH, bias=False)

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        x = x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x))))
        return x


class ByteGPT(nn.Module):
    """Pre-LayerNorm GPT; the output projection reuses the token embedding."""

    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, WIDTH)
        self.position_embedding = nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(NUM_LAYERS))
        self.final_norm = nn.LayerNorm(WIDTH, bias=False)
        self._init_weights()

    def _init_weights(self):
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue  # LayerNorm scales keep their default of one.
            std = 0.02
            if name.endswith(("attention.proj.weight", "mlp_out.weight")):
                # Residual-branch outputs are scaled down with depth.
                std = 0.02 / math.sqrt(2 * NUM_LAYERS)
            nn.init.normal_(param, mean=0.0, std=std)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x) @ self.token_embedding.weight.T


def mean_cross_entropy(model, windows):
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1))


def sample_windows(data, batch_size, generator):
    """Random windows of CONTEXT + 1 bytes: inputs plus shifted targets."""
    starts = torch.randint(
        0, len(data) - CONTEXT, (batch_size,), generator=generator)
    offsets = torch.arange(CONTEXT + 1)
    return data[starts[:, None] + offsets[None, :]]


def learning_rate(step, total_steps):
    """Linear warmup to PEAK_LR, then cosine decay to FINAL_LR at total_steps."""
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS)
    progress = min(progress, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return FINAL_LR + cosine * (PEAK_LR - FINAL_LR)


def make_optimizer(model):
    """AdamW with weight decay on matrices only (not on LayerNorm scales)."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": matrices, "weight_decay": WEIGHT_DECAY},
         {"params": vectors, "weight_decay": 0.0}],
        lr=PEAK_LR, betas=BETAS)


@torch.no_grad()
def validation_loss(model, eval_windows):
    model.eval()
    losses = [mean_cross_entropy(model, windows).item()
              for windows in eval_windows]
    model.train()
    return sum(losses) / len(losses)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="training text file")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--eval_batches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="where to write the JSON summary")
    return parser.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with open(args.text, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]

    eval_generator = torch.Generator().manual_seed(EVAL_SEED)
    eval_windows = [
        sample_windows(val_data, args.batch_size, eval_generator)
        for _ in range(args.eval_batches)]

    model = ByteGPT()
    optimizer = make_optimizer(model)
    train_generator = torch.Generator().manual_seed(args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"{params:,} parameters, {len(train_data):,} train bytes, "
          f"{len(val_data):,} validation bytes")

    step_times = []
    val_losses = {}
    train_loss = float("nan")
    for step in range(args.steps):
        start = time.perf_counter()
        lr = learning_rate(step, args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        windows = sample_windows(train_data, args.batch_size, train_generator)
        loss = mean_cross_entropy(model, windows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        train_loss = loss.item()
        step_times.append(time.perf_counter() - start)

        steps_done = step + 1
        if steps_done % 50 == 0:
            print(f"step {steps_done:5d}  loss {train_loss:.4f}  lr {lr:.2e}  "
                  f"{1000 * step_times[-1]:.1f} ms/step")
        if steps_done % args.eval_every == 0 or steps_done == args.steps:
            val_losses[steps_done] = validation_loss(model, eval_windows)
            print(f"step {steps_done:5d}  val loss {val_losses[steps_done]:.4f}")

    timed = step_times[WARMUP_STEPS_NOT_TIMED:] or step_times
    tokens_per_step = args.batch_size * CONTEXT
    summary = {
        "steps": args.steps,
        "tokens_per_second": tokens_per_step * len(timed) / sum(timed),
        "step_time_ms_mean": 1000 * statistics.mean(timed),
        "step_time_ms_median": 1000 * statistics.median(timed),
        "final_val_loss": val_losses[args.steps],
        "val_losses": val_losses,
        "train_loss_last": train_loss,
        # ru_maxrss is in kilobytes on Linux.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": params,
        "torch_version": torch.__version__,
        "threads": args.threads,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
