"""The reference in-context segmentation model (segicl-ref), split along the engine contract.

encoder(image [1,1,R,R], mask [1,1,R,R]) -> ctx [1,T,D], feat_0..feat_3
decoder(feat_0..feat_3, ctx [1,S*T,D], ctx_valid [1,S*T]) -> logits [1,1,R,R]

The encoder runs once per shot (its ctx is cached by the runtime) and once per frame (mask of
zeros; only the features are used). Shots reach the decoder only through their T tokens:
  - 6 masked-average prototypes (foreground and background at 1/4, 1/8 and 1/16 resolution),
  - 16 tokens of a 4x4 grid of mask-conditioned features at 1/16 resolution.
The decoder compares the frame's features with the prototypes (cosine-similarity maps at three
scales, averaged and max-pooled over the valid shots), lets the 1/16 features attend to all
tokens (two cross-attention blocks), and upsamples with skip connections to R/2, then R.

Everything exports to plain ONNX ops that tract runs fast: convolutions, MatMul, elementwise
Max instead of reductions over shots, Resize, Softmax.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

R = 128  # resolution
S = 3  # shots
D = 64  # token width
PROTOTYPE_TOKENS = 6
GRID = 4
T = PROTOTYPE_TOKENS + GRID * GRID  # tokens per shot
WIDTHS = (24, 48, 64, 96)  # backbone channels at R/2, R/4, R/8, R/16
SIM_MAPS = 4  # similarity channels per scale


def conv_bn(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a (strided, projected) shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride)
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + self.skip(x))


def masked_mean(feat, weight):
    """Mean of feat [B,D,H,W] weighted by weight [B,1,H,W] -> [B,1,D] (as a MatMul)."""
    b, d, h, w = feat.shape
    f = feat.reshape(b, d, h * w)
    m = weight.reshape(b, h * w, 1)
    return (torch.matmul(f, m) / (m.sum(dim=1, keepdim=True) + 1e-4)).transpose(1, 2)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        c1, c2, c3, c4 = WIDTHS
        self.stem = nn.Sequential(conv_bn(1, c1, 3, 2), conv_bn(c1, c1))
        self.stage2 = ResBlock(c1, c2, 2)
        self.stage3 = ResBlock(c2, c3, 2)
        self.stage4 = ResBlock(c3, c4, 2)
        self.proj = nn.ModuleList([nn.Conv2d(c, D, 1) for c in (c2, c3, c4)])
        self.grid = nn.Sequential(nn.Conv2d(c4 + D + 1, D, 1), nn.ReLU(inplace=True), nn.Conv2d(D, D, 1))

    def features(self, image):
        f1 = self.stem(image)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f4 = self.stage4(f3)
        p2, p3, p4 = (proj(f) for proj, f in zip(self.proj, (f2, f3, f4)))
        return f1, p2, p3, p4, f4

    def forward(self, image, mask):
        f1, p2, p3, p4, f4 = self.features(image)
        fg, bg = [], []
        for p, k in ((p2, 4), (p3, 8), (p4, 16)):
            m = F.avg_pool2d(mask, k)
            fg.append(masked_mean(p, m))
            bg.append(masked_mean(p, 1.0 - m))
        m4 = F.avg_pool2d(mask, 16)
        g = self.grid(torch.cat([f4, p4 * m4, m4], dim=1))
        g = F.avg_pool2d(g, 8 // GRID).flatten(2).transpose(1, 2)  # [B,16,D]
        ctx = torch.cat(fg + bg + [g], dim=1)  # [B,T,D]
        return ctx, f1, p2, p3, p4


class CrossBlock(nn.Module):
    """Frame tokens attend to the context tokens (padding masked out), then an MLP."""

    def __init__(self, heads=4):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(D)
        self.norm_kv = nn.LayerNorm(D)
        self.q = nn.Linear(D, D)
        self.kv = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, D)
        self.norm_mlp = nn.LayerNorm(D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(approximate="tanh"), nn.Linear(2 * D, D))

    def forward(self, x, ctx, bias):
        # x [B,N,D], ctx [B,M,D], bias [B,1,1,M]
        b, n, _ = x.shape
        m = ctx.shape[1]
        h, dh = self.heads, D // self.heads
        q = self.q(self.norm_q(x)).reshape(b, n, h, dh).transpose(1, 2)
        kv = self.kv(self.norm_kv(ctx))
        k = kv[..., :D].reshape(b, m, h, dh).permute(0, 2, 3, 1)
        v = kv[..., D:].reshape(b, m, h, dh).transpose(1, 2)
        att = torch.softmax(torch.matmul(q, k) * (dh**-0.5) + bias, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, n, D)
        x = x + self.out(y)
        return x + self.mlp(self.norm_mlp(x))


def similarity_maps(feat, fg, bg, valid):
    """Cosine similarity of feat [B,D,H,W] with per-shot prototypes fg, bg [B,S,D].

    valid [B,S]. Returns [B,4,H,W]: mean over valid shots of fg and bg similarity, and the max
    over valid shots of each (elementwise Max over the S slices: no reductions)."""
    b, d, h, w = feat.shape
    q = F.normalize(feat, dim=1, eps=1e-4).reshape(b, d, h * w)
    count = valid.sum(dim=1).clamp(min=1.0).reshape(b, 1, 1)
    out = []
    for protos in (fg, bg):
        p = F.normalize(protos, dim=2, eps=1e-4)
        sim = torch.matmul(p, q)  # [B,S,HW]
        vs = valid.reshape(b, S, 1)
        mean = (sim * vs).sum(dim=1, keepdim=True) / count
        masked = sim * vs + (vs - 1.0) * 4.0
        mx = torch.maximum(torch.maximum(masked[:, 0:1], masked[:, 1:2]), masked[:, 2:3])
        out += [mean, mx]
    return torch.cat(out, dim=1).reshape(b, 4, h, w) * 5.0


def up2(x):
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        c1 = WIDTHS[0]
        self.token_type = nn.Parameter(torch.zeros(1, 1, T, D))
        self.inp = nn.Sequential(nn.Conv2d(D + SIM_MAPS, D, 1), nn.ReLU(inplace=True))
        self.pos = nn.Parameter(torch.zeros(1, (R // 16) ** 2, D))
        self.blocks = nn.ModuleList([CrossBlock(), CrossBlock()])
        self.up3 = nn.Sequential(conv_bn(D + D + SIM_MAPS, D), conv_bn(D, D))
        self.up2 = nn.Sequential(conv_bn(D + D + SIM_MAPS, 32), conv_bn(32, 32))
        self.up1 = conv_bn(32 + c1, 16)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, f1, p2, p3, p4, ctx, ctx_valid):
        b = ctx.shape[0]
        tokens = ctx.reshape(b, S, T, D)
        valid = ctx_valid.reshape(b, S, T)[:, :, 0]  # [B,S]
        sims = [similarity_maps(p, tokens[:, :, i], tokens[:, :, 3 + i], valid) for i, p in enumerate((p2, p3, p4))]
        x = self.inp(torch.cat([p4, sims[2]], dim=1))
        h, w = x.shape[2:]
        x = x.flatten(2).transpose(1, 2) + self.pos
        kv = (tokens + self.token_type).reshape(b, S * T, D)
        bias = ((ctx_valid - 1.0) * 1e4).reshape(b, 1, 1, S * T)
        for block in self.blocks:
            x = block(x, kv, bias)
        x = x.transpose(1, 2).reshape(b, D, h, w)
        x = self.up3(torch.cat([up2(x), p3, sims[1]], dim=1))
        x = self.up2(torch.cat([up2(x), p2, sims[0]], dim=1))
        x = self.up1(torch.cat([up2(x), f1], dim=1))
        return up2(self.head(x))


class SegICL(nn.Module):
    """Encoder + decoder, with a batched episode forward for training."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()

    def forward(self, shots, shot_masks, valid, query):
        """shots, shot_masks [B,S,1,R,R]; valid [B,S] (0/1); query [B,1,R,R] -> logits [B,1,R,R].

        Invalid slots are encoded too (their tokens are replaced by noise, as padding may hold
        anything in the runtime's cache)."""
        b = query.shape[0]
        n_used = int(valid.sum(dim=0).gt(0).sum().item())  # slots used by any episode (leading)
        ctx_used, *_ = self.encoder(shots[:, :n_used].flatten(0, 1), shot_masks[:, :n_used].flatten(0, 1))
        ctx = torch.randn(b, S, T, D, device=query.device)
        ctx[:, :n_used] = ctx_used.reshape(b, n_used, T, D)
        v = valid.reshape(b, S, 1, 1)
        ctx = ctx * v + torch.randn_like(ctx) * (1 - v)
        ctx_valid = valid.reshape(b, S, 1).expand(b, S, T).reshape(b, S * T)
        _, f1, p2, p3, p4 = self.encoder(query, torch.zeros_like(query))
        return self.decoder(f1, p2, p3, p4, ctx.reshape(b, S * T, D), ctx_valid)


class EncoderExport(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, image, mask):
        return self.encoder(image, mask)


class DecoderExport(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, feat_0, feat_1, feat_2, feat_3, ctx, ctx_valid):
        return self.decoder(feat_0, feat_1, feat_2, feat_3, ctx, ctx_valid)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())
