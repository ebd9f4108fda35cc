"""Neural Turing Machine (Graves, Wayne and Danihelka 2014, arXiv 1410.5401), one frame per call.

A controller (an LSTM or a feed-forward layer) reads the frame ``x_t`` and the previous read
vectors ``r_{t-1}``; its output ``h_t`` drives R read heads and W write heads over an N x M memory.
Each head emits the paper's addressing parameters, and its weighting ``w_t`` over the N rows is
found in the paper's four stages (section 3.3):

1. content addressing: ``w_c = softmax(beta * K(k, M_i))``, ``K`` the cosine similarity
   (an epsilon keeps zero rows and zero keys finite), key strength ``beta = softplus(.) >= 0``;
2. interpolation with the head's previous weighting: ``w_g = g w_c + (1 - g) w_{t-1}``, ``g = sigmoid(.)``;
3. circular convolution with a shift kernel ``s = softmax(.)`` over the shifts
   ``-(S // 2) .. S - 1 - S // 2`` (``S = shift_range``; 3 gives -1, 0, 1):
   ``w_s(i) = sum_j w_g(i - j) s(j)``, indices modulo N;
4. sharpening: ``w(i) = w_s(i)^gamma / sum_j w_s(j)^gamma``, ``gamma = 1 + softplus(.) >= 1``,
   computed as ``softmax(gamma * log(max(w_s, eps)))``, which is the same ratio but never 0/0 or
   NaN, also from states that are not distributions (a runtime may hand in any state).

Order within a step: the controller runs on ``[x_t, r_{t-1}]``; the read heads address ``M_{t-1}``
and read ``r_t = w^r M_{t-1}``; the write heads address ``M_{t-1}`` and write
``M_t = M_{t-1} * prod_h (1 - w^w_h e_h^T) + sum_h w^w_h a_h^T`` (erase ``e = sigmoid(.)``, add
``a = tanh(.)``; all erases before all adds, as in section 3.2); the output is a linear map of
``[h_t, r_t]`` (logits).

The recurrent state is a dict of tensors that ``forward`` takes and returns, so exports carry it
as explicit state I/O (``state.memory``, ``state.read_weights``...). ``initial_state(batch)``
gives the start: the initial memory (a learned parameter with ``learn_init``, else a fixed random
buffer), the weightings on row 0, and the read vectors those weightings read from the initial
memory; the same for every stream of a batch, so exports store them in the file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

CONTROLLERS = ("lstm", "feedforward")
COSINE_EPS = 1e-8  # added to |k| |M_i|: the similarity of a zero key or row is 0, not NaN
WEIGHT_EPS = 1e-12  # floor of w_s before the sharpening power (log of 0 is -inf)


# ---------------------------------------------------------------------------------------------
# addressing (section 3.3), batched over streams and heads: weightings are [batch, heads, N]
# ---------------------------------------------------------------------------------------------

def content_addressing(k: torch.Tensor, beta: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``w_c = softmax(beta * K(k, M_i))`` over rows i; ``k`` [B,H,M], ``beta`` [B,H,1], ``memory`` [B,N,M]."""
    dot = k @ memory.transpose(1, 2)  # [B, H, N]
    norms = k.norm(dim=-1, keepdim=True) * memory.norm(dim=-1).unsqueeze(1)
    return torch.softmax(beta * dot / (norms + COSINE_EPS), dim=-1)


def interpolate(w_c: torch.Tensor, w_prev: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``w_g = g w_c + (1 - g) w_{t-1}``; ``g`` [B,H,1] in [0, 1]."""
    return g * w_c + (1 - g) * w_prev


def shift_offsets(shift_range: int) -> list[int]:
    """The shifts a kernel of width ``shift_range`` covers: 3 -> [-1, 0, 1], 4 -> [-2, -1, 0, 1]."""
    return list(range(-(shift_range // 2), shift_range - shift_range // 2))


def shift_indices(memory_size: int, shift_range: int) -> torch.Tensor:
    """``index[j, i] = (i - shift_j) mod N`` [S, N]: gathering ``w[index[j]]`` rolls ``w`` by ``shift_j``."""
    rows = torch.arange(memory_size)
    return torch.stack([(rows - o) % memory_size for o in shift_offsets(shift_range)])


def shift(w_g: torch.Tensor, s: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Circular convolution ``w_s(i) = sum_j w_g(i - shift_j) s(j)``; ``s`` [B,H,S], ``index`` from
    :func:`shift_indices`. One gather with fixed indices: no loop, no data-dependent shape."""
    rolled = w_g.index_select(-1, index.flatten()).unflatten(-1, index.shape)  # [B, H, S, N]
    return (s.unsqueeze(-1) * rolled).sum(dim=-2)


def sharpen(w_s: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``w(i) = w_s(i)^gamma / sum_j w_s(j)^gamma``, as a softmax of ``gamma log w_s``; ``gamma`` [B,H,1] >= 1."""
    return torch.softmax(gamma * torch.log(w_s.clamp_min(WEIGHT_EPS)), dim=-1)


# ---------------------------------------------------------------------------------------------
# controllers: input [x_t, r_{t-1}]; the input weight is split into an x part and a read part
# (the same map as one Linear over the concatenation), so the model's first layer is the one
# that takes the frame, and export reads the frame size from it
# ---------------------------------------------------------------------------------------------

class LSTMController(nn.Module):
    """An LSTM cell over ``[x_t, r_{t-1}]``: gates ``i, f, g, o`` as in ``nn.LSTMCell``."""

    def __init__(self, input_size: int, read_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, 4 * hidden_size)
        self.reads = nn.Linear(read_size, 4 * hidden_size, bias=False)
        self.hidden = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        with torch.no_grad():  # forget gate bias 1: remember by default (Gers et al. 2000)
            self.input.bias[hidden_size:2 * hidden_size].fill_(1.0)

    def forward(self, x: torch.Tensor, reads: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = (self.input(x) + self.reads(reads) + self.hidden(h)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class FeedForwardController(nn.Module):
    """One tanh layer over ``[x_t, r_{t-1}]``; the memory is the only state."""

    def __init__(self, input_size: int, read_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input = nn.Linear(input_size, hidden_size)
        self.reads = nn.Linear(read_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, reads: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.input(x) + self.reads(reads))


def _check_config(cfg: dict[str, Any]) -> None:
    for name in ("input_size", "output_size", "controller_size", "memory_size", "memory_width", "read_heads",
                 "write_heads", "shift_range"):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"NTM {name} must be a positive integer, got {value!r}")
    if cfg["controller"] not in CONTROLLERS:
        raise ValueError(f"NTM controller {cfg['controller']!r} is unknown; expected one of {', '.join(CONTROLLERS)}")
    if cfg["shift_range"] > cfg["memory_size"]:
        raise ValueError(f"NTM shift_range {cfg['shift_range']} is wider than the memory "
                         f"({cfg['memory_size']} rows); a circular shift kernel can cover at most memory_size shifts")
    if not isinstance(cfg["learn_init"], bool):
        raise ValueError(f"NTM learn_init must be true or false, got {cfg['learn_init']!r}")


class NTM(nn.Module):
    """Neural Turing Machine, one frame per call: ``forward(x, state) -> (y, new_state)``.

    Args:
        input_size, output_size: frame size and number of output logits.
        controller: ``"lstm"`` or ``"feedforward"``.
        controller_size: hidden units of the controller.
        memory_size, memory_width: N rows of M numbers.
        read_heads, write_heads: R and W.
        shift_range: width S of the shift kernel (3: shifts -1, 0, 1); at most N.
        learn_init: learn the initial memory (else a fixed random buffer, stored in the checkpoint).

    ``x`` is ``[batch, input_size]``, ``y`` ``[batch, output_size]``; ``state`` is a dict:
    ``memory`` [B,N,M], ``read_weights`` [B,R,N], ``write_weights`` [B,W,N], ``read_vectors``
    [B,R,M] and, for the LSTM controller, ``controller_h`` and ``controller_c`` [B,H].
    """

    def __init__(self, input_size: int, output_size: int, controller: str = "lstm", controller_size: int = 100,
                 memory_size: int = 128, memory_width: int = 20, read_heads: int = 1, write_heads: int = 1,
                 shift_range: int = 3, learn_init: bool = True) -> None:
        super().__init__()
        self.config = {"input_size": input_size, "output_size": output_size, "controller": controller,
                       "controller_size": controller_size, "memory_size": memory_size, "memory_width": memory_width,
                       "read_heads": read_heads, "write_heads": write_heads, "shift_range": shift_range,
                       "learn_init": learn_init}
        _check_config(self.config)
        N, M, R, W, S = memory_size, memory_width, read_heads, write_heads, shift_range
        self.N, self.M, self.R, self.W, self.S = N, M, R, W, S
        cls = LSTMController if controller == "lstm" else FeedForwardController
        self.controller = cls(input_size, R * M, controller_size)
        # per head: key k (M), beta, g, shift kernel s (S), gamma; write heads add erase e and add a (M each)
        self.read_head = nn.Linear(controller_size, R * (M + S + 3))
        self.write_head = nn.Linear(controller_size, W * (3 * M + S + 3))
        self.output = nn.Linear(controller_size + R * M, output_size)
        bound = (N + M) ** -0.5
        memory_init = torch.empty(N, M).uniform_(-bound, bound)
        if learn_init:
            self.memory_init = nn.Parameter(memory_init)
        else:
            self.register_buffer("memory_init", memory_init)
        self.register_buffer("shift_index", shift_indices(N, S), persistent=False)
        self.register_buffer("weights_init", F.one_hot(torch.tensor(0), N).float(), persistent=False)

    @property
    def lstm(self) -> bool:
        return self.config["controller"] == "lstm"

    def initial_state(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The start of every stream: initial memory, weightings on row 0, the reads they give."""
        B, H = batch_size, self.config["controller_size"]
        memory = self.memory_init.unsqueeze(0).expand(B, -1, -1)
        read_weights = self.weights_init.expand(B, self.R, -1)
        state = {
            "memory": memory,
            "read_weights": read_weights,
            "write_weights": self.weights_init.expand(B, self.W, -1),
            "read_vectors": read_weights @ memory,
        }
        if self.lstm:
            state["controller_h"] = memory.new_zeros(B, H)
            state["controller_c"] = memory.new_zeros(B, H)
        return state

    def address(self, k: torch.Tensor, beta: torch.Tensor, g: torch.Tensor, s: torch.Tensor, gamma: torch.Tensor,
                memory: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
        """The heads' weightings [B,H,N] from their raw outputs (before the paper's activations)."""
        w_c = content_addressing(k, F.softplus(beta), memory)
        w_g = interpolate(w_c, w_prev, torch.sigmoid(g))
        w_s = shift(w_g, torch.softmax(s, dim=-1), self.shift_index)
        return sharpen(w_s, 1 + F.softplus(gamma))

    def forward(self, x: torch.Tensor, state: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        M, S = self.M, self.S
        memory = state["memory"]
        reads_prev = state["read_vectors"].flatten(1)
        if self.lstm:
            h, c = self.controller(x, reads_prev, state["controller_h"], state["controller_c"])
        else:
            h = self.controller(x, reads_prev)
        # read heads: address M_{t-1}, read r_t
        k, beta, g, s, gamma = self.read_head(h).unflatten(-1, (self.R, -1)).split([M, 1, 1, S, 1], dim=-1)
        w_r = self.address(k, beta, g, s, gamma, memory, state["read_weights"])
        r = w_r @ memory  # [B, R, M]
        # write heads: address M_{t-1}, then every head erases, then every head adds
        k, beta, g, s, gamma, e, a = self.write_head(h).unflatten(-1, (self.W, -1)).split([M, 1, 1, S, 1, M, M],
                                                                                          dim=-1)
        w_w = self.address(k, beta, g, s, gamma, memory, state["write_weights"])
        e, a = torch.sigmoid(e), torch.tanh(a)
        erase = torch.prod(1 - w_w.unsqueeze(-1) * e.unsqueeze(-2), dim=1)  # [B, N, M]
        memory = memory * erase + w_w.transpose(1, 2) @ a
        y = self.output(torch.cat([h, r.flatten(1)], dim=-1))
        new_state = {"memory": memory, "read_weights": w_r, "write_weights": w_w, "read_vectors": r}
        if self.lstm:
            new_state["controller_h"], new_state["controller_c"] = h, c
        return y, new_state
