"""Generated arithmetic problems with direct answers and worked, step-by-step solutions.

A problem is an operation ('add', 'subtract', 'multiply') and two operands. Problem
number `index` of a stream is a pure function of (stream key, split, index), so a
stream is unlimited and the same on every run. The split is a function of the
problem alone: a problem is in validation when the SHA-256 of "op:a:b" falls in
the first `VALIDATION_FRACTION` of the hash range, so train and validation never
share a problem, whichever task (direct or step-by-step) draws it.
"""

import dataclasses
import hashlib
import random

OPERATIONS = ("add", "subtract", "multiply")
SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*"}
# Digits of the first and second operand: 2-3 each; multiplication by a 1-2 digit number.
OPERAND_DIGITS = {"add": ((2, 3), (2, 3)), "subtract": ((2, 3), (2, 3)),
                  "multiply": ((2, 3), (1, 2))}
VALIDATION_FRACTION = 0.1
_COLUMN_NAMES = ("ones", "tens", "hundreds", "thousands", "ten-thousands")


@dataclasses.dataclass(frozen=True)
class Problem:
    operation: str
    a: int
    b: int

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.operation]

    @property
    def answer(self) -> int:
        if self.operation == "add":
            return self.a + self.b
        if self.operation == "subtract":
            return self.a - self.b
        return self.a * self.b


def problem_split(problem: Problem) -> str:
    digest = hashlib.sha256(f"{problem.operation}:{problem.a}:{problem.b}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if fraction < VALIDATION_FRACTION else "train"


def nth_problem(operation: str, stream: str, split: str, index: int,
                operand_ranges: tuple | None = None) -> Problem:
    """Problem `index` of the stream `stream` of `split`: the first draw that belongs to
    `split`. `operand_ranges` ((low, high) per operand, inclusive) overrides the
    operation's digit counts."""
    for attempt in range(10_000):
        rng = random.Random(f"{stream}:{split}:{index}:{attempt}")
        problem = _draw(operation, rng, operand_ranges)
        if problem_split(problem) == split:
            return problem
    raise RuntimeError(f"No {split} problem for {operation} in 10000 draws.")


def _draw(operation: str, rng: random.Random, operand_ranges=None) -> Problem:
    if operand_ranges:
        a, b = (rng.randint(low, high) for low, high in operand_ranges)
    else:
        a, b = (_random_number(rng, digits) for digits in OPERAND_DIGITS[operation])
    if operation == "subtract" and b > a:
        a, b = b, a   # Answers stay non-negative.
    return Problem(operation, a, b)


def _random_number(rng: random.Random, digit_range: tuple[int, int]) -> int:
    digits = rng.randint(*digit_range)
    return rng.randrange(10 ** (digits - 1), 10 ** digits)


def worked_solution(problem: Problem) -> str:
    """Column-by-column steps, then 'The answer is N.'"""
    steps = {"add": _addition_steps, "subtract": _subtraction_steps,
             "multiply": _multiplication_steps}[problem.operation](problem.a, problem.b)
    closing = (f"So {problem.a} {problem.symbol} {problem.b} = {problem.answer}. "
               f"The answer is {problem.answer}.")
    return "\n".join([*steps, closing])


def _digits(number: int, count: int) -> list[int]:
    """The `count` lowest digits, ones first."""
    return [number // 10 ** k % 10 for k in range(count)]


def _addition_steps(a: int, b: int) -> list[str]:
    columns = len(str(max(a, b)))
    steps = ["Add the digits column by column from the right, carrying the tens."]
    carry = 0
    for name, x, y in zip(_COLUMN_NAMES, _digits(a, columns), _digits(b, columns)):
        total = x + y + carry
        carried = f" + {carry}" if carry else ""
        carry = total // 10
        step = f"{name}: {x} + {y}{carried} = {total}, write {total % 10}"
        steps.append(step + (", carry 1" if carry else ""))
    if carry:
        steps.append(f"{_COLUMN_NAMES[columns]}: write the carried {carry}")
    return steps


def _subtraction_steps(a: int, b: int) -> list[str]:
    columns = len(str(a))
    steps = ["Subtract the digits column by column from the right, borrowing when needed."]
    borrow = 0
    for name, x, y in zip(_COLUMN_NAMES, _digits(a, columns), _digits(b, columns)):
        top = x - borrow
        lent = f" - {borrow}" if borrow else ""
        borrow = int(top < y)
        if borrow:
            steps.append(f"{name}: {x}{lent} is less than {y}, so borrow 10: "
                         f"{top + 10} - {y} = {top + 10 - y}")
        else:
            steps.append(f"{name}: {x}{lent} - {y} = {top - y}")
    return steps


def _multiplication_steps(a: int, b: int) -> list[str]:
    steps = ["Split the numbers into place values, multiply the parts, then add them up."]
    partials = []
    for b_part in reversed(_place_values(b)):
        parts = [(a_part, a_part * b_part) for a_part in _place_values(a)]
        products = " + ".join(f"{a_part} * {b_part}" for a_part, _ in parts)
        values = " + ".join(str(value) for _, value in parts)
        partials.append(a * b_part)
        steps.append(f"{a} * {b_part} = {products} = {values} = {a * b_part}")
    if len(partials) > 1:
        steps.append(f"{' + '.join(map(str, partials))} = {sum(partials)}")
    return steps


def _place_values(number: int) -> list[int]:
    """478 -> [400, 70, 8]; zero digits are left out (406 -> [400, 6])."""
    digits = str(number)
    return [int(d) * 10 ** (len(digits) - 1 - k) for k, d in enumerate(digits) if d != "0"]
