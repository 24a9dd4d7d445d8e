"""Which activations the Inductor lowering can fuse into their producer, on a Dynamo graph of a DiT block;
and the cache key that keeps Inductor from serving graphs compiled by another lynx."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from lynx_compile.backend import KeyedOnLynx
from lynx_compile.passes.gemms import find_gemms
from lynx_compile.passes.producers import fusable_producer


class Block(nn.Module):
    """adaLN -> qkv, attention -> to_out, GELU MLP, and two layers without a pointwise producer."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(d, d)  # reads the graph input
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.to_q, self.to_k, self.to_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.to_out = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.down = nn.Linear(d, d, bias=False)
        self.after_down = nn.Linear(d, d)  # reads a GEMM output through a view only

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, s, d = x.shape
        h = self.norm(x) * (1 + scale) + shift
        q, k, v = (f(h).view(b, s, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
        x = x + self.to_out(a)
        x = x + self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
        return self.after_down(self.down(x).view(b, s, d))


def _producers(model: nn.Module, *args: torch.Tensor) -> dict[str, tuple[bool, str]]:
    """fusable_producer of every GEMM's activation, on the graph Dynamo hands a backend."""
    found = {}

    def backend(gm, example_inputs):  # Dynamo drops the placeholders' sources after compiling
        found.update({site.name: fusable_producer(site.x) for site in find_gemms(gm)})
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend)(*args)
    return found


def test_fusable_producers_of_a_dit_block():
    d = 32
    got = _producers(Block(d).eval(), torch.randn(2, 8, d), torch.randn(2, 1, d), torch.randn(2, 1, d))
    assert got["embed"] == (False, "graph input")
    for name in ("to_q", "to_k", "to_v"):  # adaLN: layer_norm * (1 + scale) + shift, in the norm's kernel
        assert got[name] == (False, "add after layer_norm (computed in the norm's reduction kernel)"), got[name]
    fused, producer = got["to_out"]  # attention output, read through its transpose
    assert fused and producer == "permuted scaled_dot_product_attention output"
    assert got["fc1"] == (True, "add")  # the residual add
    assert got["fc2"] == (True, "gelu")
    assert got["after_down"] == (False, "linear output")


class RmsNormLinear(nn.Module):
    """A hand-written RMSNorm (as in many DiT codebases) feeding a GEMM, and a GELU after it."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return self.down(F.gelu(self.up(h)))


def test_a_norms_pointwise_tail_is_not_fusable_but_gelu_is():
    got = _producers(RmsNormLinear().eval(), torch.randn(2, 8, 32))
    assert got["up"] == (False, "mul after mean (computed in the norm's reduction kernel)"), got["up"]
    assert got["down"] == (True, "gelu")


class _UserPass:
    """Stands for a user's CustomGraphPass."""

    def __init__(self, key):
        self.key, self.calls = key, 0

    def __call__(self, graph):
        self.calls += 1

    def uuid(self):
        return self.key


def test_cache_key_carries_lynx_sources_and_runs_the_users_pass():
    from torch._inductor.custom_graph_pass import CustomGraphPass

    user = type("P", (_UserPass, CustomGraphPass), {})("mine")
    keyed = KeyedOnLynx(user)
    source_hash, inner = keyed.uuid()
    assert isinstance(source_hash, bytes) and len(source_hash) == 32 and inner == ("mine",)
    assert KeyedOnLynx(None).uuid() == (source_hash, ())
    keyed(fx.Graph())
    assert user.calls == 1
    assert KeyedOnLynx(lambda graph: None).uuid() is None  # a plain callable: not cacheable
