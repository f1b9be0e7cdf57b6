"""MoCo v2 building blocks: EMA update, key queue, InfoNCE, Shuffle-BN (DDP and single-device).

Follows facebookresearch/moco (``moco/builder.py``) and its single-GPU Colab (``SplitBatchNorm``):

* the key encoder is an exponential moving average of the query encoder's *parameters* (BN buffers
  are not averaged, as in the official code, lightly and solo-learn) and never gets gradients;
* the queue is a ``(dim, K)`` buffer of L2-normalised keys plus a pointer, both persistent so that a
  checkpoint restores them; keys of all ranks are gathered before they enter the queue;
* Shuffle-BN: under DDP, the key batch is shuffled across ranks (all_gather, a permutation made on
  rank 0 and broadcast, each rank keeps its slice) and unshuffled after the key encoder; on one
  device the BN layers compute statistics over ``bn_splits`` sub-batches (:class:`SplitBatchNorm2d`)
  and the key batch is permuted locally, which gives the same effect.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# pure tensor maths


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """``target_param = m * target_param + (1 - m) * online_param`` for every parameter (not buffers).

    Parameters
    ----------
    online, target
        Modules with identically ordered parameters (the target is a copy of the online module).
    m
        Momentum in [0, 1]; 1 keeps the target unchanged, 0 copies the online parameters.
    """
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("online and target modules have different parameter lists")
    if not t_params:
        return
    torch._foreach_mul_(t_params, m)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - m)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (B, dim) into the columns of ``queue`` (dim, K) from ``ptr`` on, wrapping around.

    Column ``(ptr + i) % K`` receives key ``i``; ``ptr`` becomes ``(ptr + B) % K``. When ``B > K`` only
    the last ``K`` keys are kept (each column is written once, by the newest key that maps to it).
    Unlike the official code, ``K`` need not be a multiple of ``B``.
    """
    dim, size = queue.shape
    batch = keys.shape[0]
    if keys.shape[1] != dim:
        raise ValueError(f"keys have dimension {keys.shape[1]}, queue has {dim}")
    start = int(ptr.item())
    if batch >= size:
        kept = keys[batch - size:]
        first = (start + batch - size) % size
        idx = (first + torch.arange(size, device=queue.device)) % size
    else:
        kept = keys
        idx = (start + torch.arange(batch, device=queue.device)) % size
    queue[:, idx] = kept.detach().T.to(queue.dtype)
    ptr.fill_((start + batch) % size)


def infonce_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo logits ``[q.k, q.queue] / T`` of shape ``(B, 1 + K)``; the positive is column 0.

    ``q`` and ``k`` are L2-normalised ``(B, dim)``; ``queue`` is ``(dim, K)``. Computed in float32.
    """
    q = q.float()
    l_pos = (q * k.float().detach()).sum(dim=1, keepdim=True)
    l_neg = q @ queue.detach().float()
    return torch.cat([l_pos, l_neg], dim=1) / temperature


def infonce_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive at index 0 (InfoNCE)."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def contrastive_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of queries whose positive key has the largest logit (top-1 of the 1 + K way task)."""
    return (logits.argmax(dim=1) == 0).float().mean()


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the per-dimension std of L2-normalised embeddings ``(B, dim)``.

    Uniformly spread embeddings give about ``1 / sqrt(dim)``; a collapsed representation gives 0.
    """
    return F.normalize(z.float(), dim=1).std(dim=0).mean()


# --------------------------------------------------------------------------------------------
# distributed helpers


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather ``tensor`` from every rank and concatenate on dim 0 (no gradient). Identity on 1 process."""
    if world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def batch_shuffle_ddp(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle a batch across ranks (official MoCo ``_batch_shuffle_ddp``).

    Every rank must pass a batch of the same size. Rank 0 draws a permutation of the global batch
    (from ``generator`` when given) and broadcasts it; each rank returns its slice of the shuffled
    global batch and the index that undoes the shuffle (for :func:`batch_unshuffle_ddp`).
    """
    local = x.shape[0]
    x_all = concat_all_gather(x)
    total = x_all.shape[0]
    if total != local * world_size():
        raise RuntimeError("per-rank batches must have equal sizes for Shuffle-BN")
    if dist.get_rank() == 0:
        idx_shuffle = torch.randperm(total, generator=generator).to(x.device)
    else:
        idx_shuffle = torch.empty(total, dtype=torch.long, device=x.device)
    dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    rank = dist.get_rank()
    mine = idx_shuffle.view(world_size(), -1)[rank]
    return x_all[mine], idx_unshuffle


@torch.no_grad()
def batch_unshuffle_ddp(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`batch_shuffle_ddp` on the key encoder's output: rank r gets back its own samples."""
    x_all = concat_all_gather(x)
    mine = idx_unshuffle.view(world_size(), -1)[dist.get_rank()]
    return x_all[mine]


# --------------------------------------------------------------------------------------------
# single-device Shuffle-BN emulation


def _split_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm with statistics over ``bn.num_splits`` interleaved sub-batches of equal size.

    Split ``j`` holds samples ``j, j + s, j + 2s, ...`` (``s = num_splits``). One ``batch_norm`` call
    does all splits: the batch ``(N, C, H, W)`` is viewed as ``(N / s, s * C, H, W)`` (free for a
    contiguous tensor; a channels-last one is copied and the result copied back) with the affine
    parameters and running statistics repeated ``s`` times, as the single-GPU MoCo Colab's
    ``SplitBatchNorm``. The running statistics move by the mean of the splits' updates.
    """
    splits = getattr(bn, "num_splits", 1)
    n = x.shape[0]
    if not bn.training or splits <= 1 or n % splits or not bn.track_running_stats or x.ndim != 4:
        return nn.BatchNorm2d.forward(bn, x)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    _, c, h, w = x.shape
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    mean, var = bn.running_mean.repeat(splits), bn.running_var.repeat(splits)
    weight = None if bn.weight is None else bn.weight.repeat(splits)
    bias = None if bn.bias is None else bn.bias.repeat(splits)
    out = F.batch_norm(x.contiguous().view(n // splits, splits * c, h, w), mean, var, weight, bias, True,
                       momentum, bn.eps)
    # not a view in autograd's eyes: the in-place activation that follows (timm's ReLU(inplace=True))
    # would otherwise turn its backward into an as_strided copy of the whole activation map
    out = torch.ops.aten._unsafe_view(out, (n, c, h, w))
    with torch.no_grad():
        bn.running_mean.copy_(mean.view(splits, c).mean(dim=0))
        bn.running_var.copy_(var.view(splits, c).mean(dim=0))
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class SplitBatchNorm2d(nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` whose training statistics are computed per sub-batch.

    A batch of ``N`` is cut into ``num_splits`` interleaved sub-batches of ``N / num_splits`` samples
    (split ``j``: samples ``j, j + s, ...``); running statistics are the mean of the splits' updates. Same parameters and state-dict keys as ``BatchNorm2d``; eval mode and
    batches not divisible by ``num_splits`` use plain BatchNorm.
    """

    num_splits: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _split_batch_norm(self, x)


def _split_bn_act_class():
    """A split version of timm's ``BatchNormAct2d`` (BN + drop + activation), if timm has it."""
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - old timm
        return None, None

    class SplitBatchNormAct2d(BatchNormAct2d):
        num_splits: int = 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.drop(_split_batch_norm(self, x)))

    return BatchNormAct2d, SplitBatchNormAct2d


_BN_ACT, _SPLIT_BN_ACT = _split_bn_act_class()


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> int:
    """Turn every ``BatchNorm2d`` (and timm ``BatchNormAct2d``) of ``module`` into its split version, in place.

    Parameters, buffers and state-dict keys are unchanged (only the class changes), so checkpoints and
    exported encoders are plain. Calling it again only changes ``num_splits``. Other normalisations
    (LayerNorm, GroupNorm) have no batch statistics and are left alone.

    Returns
    -------
    int
        Number of BN layers converted or updated.
    """
    count = 0
    for sub in module.modules():
        if isinstance(sub, (SplitBatchNorm2d,)) or (_SPLIT_BN_ACT is not None and isinstance(sub, _SPLIT_BN_ACT)):
            pass
        elif _BN_ACT is not None and type(sub) is _BN_ACT:
            sub.__class__ = _SPLIT_BN_ACT
        elif type(sub) is nn.BatchNorm2d:
            sub.__class__ = SplitBatchNorm2d
        elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
            log.warning("BN layer of type %s left without split statistics", type(sub).__name__)
            continue
        else:
            continue
        sub.num_splits = int(num_splits)
        count += 1
    return count


def set_bn_splits(module: nn.Module, num_splits: int) -> None:
    """Change the number of splits of layers converted by :func:`convert_split_batchnorm`."""
    for sub in module.modules():
        if hasattr(sub, "num_splits") and isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.num_splits = int(num_splits)


# --------------------------------------------------------------------------------------------
# the model


def _no_generator() -> None:
    """Default source of Shuffle-BN permutations: torch's global generator."""
    return


def projection_head(in_features: int, hidden: int, dim: int) -> nn.Sequential:
    """MoCo v2 MLP head ``Linear(in, hidden) - ReLU - Linear(hidden, dim)`` (no BN), named ``0``/``2``."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


class MoCoV2(nn.Module):
    """MoCo v2: query encoder + MLP head, momentum key encoder + head, queue of keys.

    Parameters
    ----------
    encoder
        Query encoder producing pooled features ``(B, F)`` (a timm model with ``num_classes=0``);
        ``encoder.num_features`` sizes the head when present.
    dim
        Embedding dimension (128).
    queue_size
        Number of negative keys K (65536).
    momentum
        EMA momentum m of the key encoder (0.999).
    temperature
        InfoNCE temperature T (0.2).
    mlp_hidden
        Hidden width of the projection head; ``None``: the encoder's feature width (2048 for resnet50).
    bn_splits
        Single-device Shuffle-BN emulation: BN statistics over this many sub-batches (1 disables).
    shuffle_bn
        Shuffle the key batch before the key encoder (across ranks under DDP, locally otherwise).
    """

    def __init__(self, encoder: nn.Module, dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, mlp_hidden: int | None = None, bn_splits: int = 8,
                 shuffle_bn: bool = True):
        super().__init__()
        if queue_size < 1 or dim < 1:
            raise ValueError("queue_size and dim must be >= 1")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        features = int(encoder.num_features)
        hidden = int(mlp_hidden or features)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.shuffle_bn = bool(shuffle_bn)
        self.bn_splits = int(bn_splits)
        self.encoder_q = encoder
        self.head_q = projection_head(features, hidden, dim)
        if self.bn_splits > 1:
            convert_split_batchnorm(self.encoder_q, self.bn_splits)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.head_k = copy.deepcopy(self.head_q)
        for p in list(self.encoder_k.parameters()) + list(self.head_k.parameters()):
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.shuffle_generator: Callable[[], torch.Generator | None] = _no_generator

    # -- pieces ---------------------------------------------------------------------------------

    def query_parameters(self):
        """Parameters trained by the optimiser (query encoder and head)."""
        return list(self.encoder_q.parameters()) + list(self.head_q.parameters())

    def embed_query(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head_q(self.encoder_q(x)).float(), dim=1)

    @torch.no_grad()
    def update_key_encoder(self) -> None:
        momentum_update(self.encoder_q, self.encoder_k, self.momentum)
        momentum_update(self.head_q, self.head_k, self.momentum)

    @torch.no_grad()
    def embed_key(self, x: torch.Tensor) -> torch.Tensor:
        """Keys of ``x`` with Shuffle-BN; row i is the key of sample i."""
        gen = self.shuffle_generator()
        if self.shuffle_bn and world_size() > 1:
            x_shuffled, idx_unshuffle = batch_shuffle_ddp(x, generator=gen)
            k = F.normalize(self.head_k(self.encoder_k(x_shuffled)).float(), dim=1)
            return batch_unshuffle_ddp(k, idx_unshuffle)
        if self.shuffle_bn and self.bn_splits > 1:
            idx = torch.randperm(x.shape[0], generator=gen).to(x.device)
            k = F.normalize(self.head_k(self.encoder_k(x[idx])).float(), dim=1)
            return k[torch.argsort(idx)]
        return F.normalize(self.head_k(self.encoder_k(x)).float(), dim=1)

    # -- one training step ------------------------------------------------------------------------

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, update_queue: bool = True):
        """One MoCo step's forward: returns ``(logits, q, k)``; updates the key encoder and the queue.

        The key encoder is updated (EMA) before the keys are computed, and the keys of all ranks
        enter the queue after the logits are formed, as in the official implementation.
        """
        q = self.embed_query(im_q)
        if update_queue:
            self.update_key_encoder()
        k = self.embed_key(im_k)
        logits = infonce_logits(q, k, self.queue.clone(), self.temperature)
        if update_queue:
            enqueue(self.queue, self.queue_ptr, concat_all_gather(k))
        return logits, q, k
