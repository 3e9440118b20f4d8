"""PyTorch reference for `weft bench train`: the same Llama shape, rows and
optimizer as weft-train, on the same random tokens, timed the same way.

Reads a JSON spec on argv[1]; prints one JSON line with tokens/s.
Full causal attention over each row (one document per row), as weft's
benchmark data has one document per row too.
"""
import json, sys, time, math
import torch
import torch.nn as nn
import torch.nn.functional as F

spec = json.loads(open(sys.argv[1]).read())
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
d, f, L, H = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"], spec["num_attention_heads"]
V, T, B = spec["vocab_size"], spec["seq_len"], spec["batch_rows"]
hd = d // H


class RMSNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w


pos = torch.arange(T, dtype=torch.float32)
inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
ang = torch.outer(pos, inv)
cos, sin = ang.cos(), ang.sin()


def rope(x):  # x: [B, H, T, hd], rotate-half
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.g, self.u = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.dn = nn.Linear(f, d, bias=False)

    def forward(self, x):
        h = self.n1(x)
        sh = lambda t: t.view(B, T, H, hd).transpose(1, 2)
        q, k, v = rope(sh(self.q(h))), rope(sh(self.k(h))), sh(self.v(h))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, d))
        h = self.n2(x)
        return x + self.dn(F.silu(self.g(h)) * self.u(h))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.norm = RMSNorm(d)

    def forward(self, ids):
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.emb.weight.T


model = Model()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
g = torch.Generator().manual_seed(1)
steps, warm = spec["steps"], spec["warmup"]
t0 = None
for s in range(steps + warm):
    if s == warm:
        t0 = time.perf_counter()
    ids = torch.randint(0, V, (B, T + 1), generator=g)
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
dt = time.perf_counter() - t0
print(json.dumps({"tokens_per_s": steps * B * T / dt, "seconds": dt, "torch": torch.__version__, "loss": loss.item()}))
