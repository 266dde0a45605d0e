"""Tasks and operators: the units of work of a TaskGraph.

A *task* is what a tuner places; an *op* is what a device runs as one kernel.
At operator granularity a task holds exactly one op; coarsening merges tasks and
keeps their ops, so the cost model always prices kernels, whatever the
granularity. That is what makes the totals (FLOPs, bytes, time) of a coarse
graph equal to the sum of its parts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Kinds of work. Matmul and attention are compute-bound at large sizes; norm,
#: elementwise, embedding are memory-bound; optimizer updates weights in place.
KINDS = (
    "matmul",
    "attention",
    "norm",
    "elementwise",
    "embedding",
    "moe",
    "collective",
    "loss",
    "optimizer",
    "other",
)

#: How an op splits under tensor parallelism of degree t (Megatron-LM):
#: column/heads/experts/vocab split the work by t with no communication after;
#: row splits by t and all-reduces its output; replicated runs whole on every rank.
#: Largest GEMM dimension an op may declare (a vocabulary of 2^24 is the largest width).
MAX_GEMM_DIM = 1 << 24

SHARD_RULES = ("column", "row", "heads", "experts", "vocab", "replicated")

#: Which part of a training step an op belongs to; inference graphs are all forward.
STEPS = ("forward", "backward", "optimizer")


def _check_choice(name: str, value: str, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise ValueError(f"{where}: field '{name}' is {value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True, slots=True)
class Op:
    """One kernel and its unsharded costs for the whole batch of the graph's workload.

    ``bytes`` counts every byte moved from/to device memory (weights, activations,
    KV cache); ``weight_bytes`` is the part of it that does not scale with the
    batch (weights read), so the cost model can price a micro-batch.
    ``allreduce_bytes`` is the buffer all-reduced across the TP group after the
    op when t > 1 (row-parallel outputs; activation gradients in backward).
    ``shard_max`` caps the useful split (e.g. KV heads): beyond it work and
    memory are replicated; 0 means no cap. ``causal`` marks attention whose
    kernel skips the masked half of the scores (counted ``flops`` stay full).
    ``gemm_k`` / ``gemm_n`` are the input and output features of a GEMM with a weight
    (0: not such a GEMM, or unknown), so the cost model can price its shape, not only
    its FLOPs and bytes: the token count is ``flops / (2 k n)``, and TP splits ``n``
    (column-parallel) or ``k`` (row-parallel).
    """

    name: str
    kind: str
    flops: float = 0.0
    bytes: float = 0.0
    weight_bytes: float = 0.0
    param_bytes: float = 0.0
    output_bytes: float = 0.0
    kv_bytes_per_token: float = 0.0
    allreduce_bytes: float = 0.0
    shard: str = "replicated"
    shard_max: int = 0
    step: str = "forward"
    causal: bool = False
    gemm_k: int = 0
    gemm_n: int = 0

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS, f"op {self.name!r}")
        _check_choice("shard", self.shard, SHARD_RULES, f"op {self.name!r}")
        _check_choice("step", self.step, STEPS, f"op {self.name!r}")
        for name in ("gemm_k", "gemm_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GEMM_DIM:
                allowed = f"an integer in 0..{MAX_GEMM_DIM}"
                raise ValueError(f"op {self.name!r}: field {name!r} must be {allowed}, not {value!r}")

    def split(self, tp: int) -> int:
        """Degree by which the op's work and memory are divided on a TP group of ``tp``."""
        if self.shard == "replicated":
            return 1
        return min(tp, self.shard_max) if self.shard_max else tp

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Task:
    """A unit of placement: one op, or several merged by coarsening.

    ``layer`` is the transformer layer index (-1 before the first layer, e.g. the
    embedding; ``n_layers`` after the last, e.g. the LM head), ``block`` the
    sublayer it belongs to (embed, attn, mlp, head, ...), ``scope`` its module
    path. Aggregate costs are the sums over ``ops``.
    """

    id: str
    kind: str
    layer: int
    block: str
    ops: tuple[Op, ...]
    scope: str = ""
    shard: str = "replicated"
    step: str = "forward"
    flops: float = field(init=False)
    bytes: float = field(init=False)
    param_bytes: float = field(init=False)
    output_bytes: float = field(init=False)
    kv_bytes_per_token: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError(f"task {self.id!r}: a task needs at least one op")
        _check_choice("kind", self.kind, KINDS, f"task {self.id!r}")
        _check_choice("shard", self.shard, SHARD_RULES, f"task {self.id!r}")
        _check_choice("step", self.step, STEPS, f"task {self.id!r}")
        object.__setattr__(self, "flops", sum(o.flops for o in self.ops))
        object.__setattr__(self, "bytes", sum(o.bytes for o in self.ops))
        object.__setattr__(self, "param_bytes", sum(o.param_bytes for o in self.ops))
        # The output of a merged task is the output of its last op: what leaves it.
        object.__setattr__(self, "output_bytes", self.ops[-1].output_bytes)
        object.__setattr__(self, "kv_bytes_per_token", sum(o.kv_bytes_per_token for o in self.ops))

    @classmethod
    def from_op(cls, op: Op, *, layer: int, block: str, scope: str = "", task_id: str | None = None) -> Task:
        """A task holding exactly one op (operator granularity)."""
        return cls(
            id=task_id or op.name,
            kind=op.kind,
            layer=layer,
            block=block,
            ops=(op,),
            scope=scope,
            shard=op.shard,
            step=op.step,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "layer": self.layer,
            "block": self.block,
            "scope": self.scope,
            "shard": self.shard,
            "step": self.step,
            "flops": self.flops,
            "bytes": self.bytes,
            "param_bytes": self.param_bytes,
            "output_bytes": self.output_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "ops": [o.to_dict() for o in self.ops],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        ops = tuple(Op(**o) for o in data["ops"])
        return cls(
            id=data["id"],
            kind=data["kind"],
            layer=int(data["layer"]),
            block=data["block"],
            ops=ops,
            scope=data.get("scope", ""),
            shard=data.get("shard", "replicated"),
            step=data.get("step", "forward"),
        )
