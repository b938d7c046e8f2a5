"""Matmul FLOPs and collective traffic read from a compiled module's optimized HLO text.

XLA's `cost_analysis()` visits every computation once, so the body of a while loop
(the scan over layers, the scan over microbatches) is counted once, not once per
iteration. Here the module's call graph is walked from ENTRY: a while body runs
`known_trip_count` times its caller, a fusion or call once per call site. Each
computation's own dots, convolutions and collectives are scaled by how often it runs.

Only matmul FLOPs are counted (2 x output elements x contracted size per dot), the
quantity the config's 6N + attention accounting models; elementwise work (norms,
softmax, the loss, the optimizer) is left out on purpose.
"""

import dataclasses
import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_BYTES_PER_ELEMENT = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1,
                      "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                      "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,<=]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%?([^\s(]+)")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([^\s=]+) = (.*)$")
_OPCODE = re.compile(r"\s*([a-z][a-z0-9-]*)\(")
_CALLEE = re.compile(r"\b(calls|body|condition|true_computation|false_computation)=%?([^\s,}]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_GROUPS_LISTED = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attributes: str


@dataclasses.dataclass
class CollectiveTraffic:
    """Per device per step: how many collectives of a kind ran and what they moved."""

    count: float = 0.0
    result_bytes: float = 0.0
    wire_bytes: float = 0.0


@dataclasses.dataclass
class HloStats:
    """Per-device figures of one execution of the module."""

    matmul_flops: float
    matmul_flops_loops_once: float
    collectives: dict[str, CollectiveTraffic]
    loop_trip_counts: list[int]
    loops_without_trip_count: int


def array_dims(shape: str) -> list[tuple[str, list[int]]]:
    """(dtype, dims) of every array in a shape string (tuples flattened)."""
    return [(dtype, [int(d.replace("<=", "")) for d in dims.split(",") if d])
            for dtype, dims in _ARRAY.findall(shape)]


def shape_bytes(shape: str) -> float:
    return sum(_BYTES_PER_ELEMENT.get(dtype, 0) * math.prod(dims)
               for dtype, dims in array_dims(shape))


def _closing(text: str, start: int) -> int:
    """Index just past the parenthesis that closes the one at `start`."""
    depth = 0
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index + 1
    raise ValueError(f"unbalanced parentheses in HLO: {text[:200]}")


def _parse_instruction(line: str) -> Instruction | None:
    match = _INSTRUCTION.match(line)
    if not match:
        return None
    name, rest = match.groups()
    shape_end = _closing(rest, 0) if rest.startswith("(") else rest.index(" ")
    opcode_match = _OPCODE.match(rest, shape_end)
    if not opcode_match:
        return None
    operands_end = _closing(rest, opcode_match.end() - 1)
    operands = re.findall(r"%([^\s,()]+)", rest[opcode_match.end():operands_end - 1])
    return Instruction(name, rest[:shape_end], opcode_match.group(1), operands,
                       rest[operands_end:])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation name: instructions}, name of the ENTRY computation)."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{") and " -> " in line:
            current = _HEADER.match(line).group(1)
            computations[current] = []
            entry = current if line.startswith("ENTRY") else entry
        elif current is not None and (instruction := _parse_instruction(line)):
            computations[current].append(instruction)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _callees(instruction: Instruction, loops_once: bool) -> list[tuple[str, int]]:
    """(computation, executions per execution of `instruction`); reducers are skipped."""
    trip_match = _TRIP_COUNT.search(instruction.attributes)
    trips = 1 if loops_once or not trip_match else int(trip_match.group(1))
    if instruction.opcode in ("async-update", "async-done"):
        return []  # the async-start names the same computation
    found = []
    for kind, callee in _CALLEE.findall(instruction.attributes):
        found.append((callee, trips if kind == "body" else 1))
    for branches in _BRANCHES.findall(instruction.attributes):
        found.extend((name.strip().lstrip("%"), 1) for name in branches.split(",") if name)
    return found


def execution_counts(computations: dict, entry: str, loops_once: bool = False) -> dict:
    """How many times each computation runs per execution of ENTRY."""
    callers: dict[str, list[tuple[str, int]]] = {name: [] for name in computations}
    for caller, instructions in computations.items():
        for instruction in instructions:
            for callee, times in _callees(instruction, loops_once):
                if callee in callers:
                    callers[callee].append((caller, times))
    counts: dict[str, float] = {}

    def count(name: str) -> float:
        if name not in counts:
            counts[name] = 1.0 if name == entry else sum(
                count(caller) * times for caller, times in callers[name])
        return counts[name]

    for name in computations:
        count(name)
    return counts


def _dot_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", instruction.attributes)
    (_, lhs_dims), = array_dims(shapes[instruction.operands[0]])
    contracted = math.prod(lhs_dims[int(d)] for d in contracting.group(1).split(",") if d)
    (_, out_dims), = array_dims(instruction.shape)
    return 2.0 * math.prod(out_dims) * contracted


def _convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    labels = re.search(r"dim_labels=[^_]*_([^-]*)->", instruction.attributes).group(1)
    (_, kernel_dims), = array_dims(shapes[instruction.operands[1]])
    (_, out_dims), = array_dims(instruction.shape)
    return 2.0 * math.prod(out_dims) * math.prod(kernel_dims) / kernel_dims[labels.index("o")]


def group_size(attributes: str, num_devices: int) -> int:
    """Devices in each replica group of a collective (all of them when unspecified)."""
    if match := _GROUPS_LISTED.search(attributes):
        return len([d for d in match.group(1).split(",") if d])
    if match := _GROUPS_IOTA.search(attributes):
        return int(match.group(2))
    if match := _GROUPS_MESH.search(attributes):
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", match.group(1)))
        names = re.findall(r"'([^']+)'", match.group(2))
        return math.prod(int(sizes.get(name, 1)) for name in names)
    return num_devices


def wire_bytes(kind: str, result_bytes: float, devices: int) -> float:
    """Bytes each device sends for one collective with a ring algorithm."""
    if devices <= 1:
        return 0.0
    share = (devices - 1) / devices
    return result_bytes * {"all-reduce": 2 * share, "all-gather": share,
                           "reduce-scatter": devices - 1, "all-to-all": share,
                           "collective-permute": 1.0}[kind]


def _collective_kind(opcode: str) -> str | None:
    """The collective an opcode completes; `-start` halves are skipped (their `-done` counts)."""
    base = opcode.removesuffix("-done")
    return base if base in COLLECTIVES and not opcode.endswith("-start") else None


def analyze(text: str, num_devices: int) -> HloStats:
    """Matmul FLOPs and collective traffic per device of one run of the HLO module."""
    computations, entry = parse_module(text)
    shapes = {i.name: i.shape for instructions in computations.values() for i in instructions}
    counts = execution_counts(computations, entry)
    counts_once = execution_counts(computations, entry, loops_once=True)
    flops = flops_once = 0.0
    collectives = {kind: CollectiveTraffic() for kind in COLLECTIVES}
    trips, unknown = [], 0
    for name, instructions in computations.items():
        for instruction in instructions:
            if instruction.opcode in ("dot", "convolution"):
                own = (_dot_flops if instruction.opcode == "dot" else _convolution_flops)(
                    instruction, shapes)
                flops, flops_once = flops + own * counts[name], flops_once + own * counts_once[name]
            elif kind := _collective_kind(instruction.opcode):
                _add_collective(collectives[kind], kind, instruction, counts[name], num_devices)
            elif instruction.opcode == "while":
                if trip := _TRIP_COUNT.search(instruction.attributes):
                    trips.append(int(trip.group(1)))
                else:
                    unknown += 1
    return HloStats(flops, flops_once, collectives, trips, unknown)


def _add_collective(traffic: CollectiveTraffic, kind: str, instruction: Instruction,
                    times: float, num_devices: int) -> None:
    result = shape_bytes(instruction.shape)
    devices = group_size(instruction.attributes, num_devices)
    traffic.count += times
    traffic.result_bytes += result * times
    traffic.wire_bytes += wire_bytes(kind, result, devices) * times
