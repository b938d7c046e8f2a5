"""The step time around each checkpoint save, from a run's logged intervals.

The trainer's tokens/s clock stops inside checkpoint blocks, so a logged interval holds
the steps' own time (step s finishes before the block of its save begins). Around a save
at step s, the intervals after it are long (the background write competes with the
steps). Their sum against the run's clean step time is the time a save adds outside its
block.
"""

import pathlib
import statistics

import figures

LOG_EVERY = 5       # the runs log every 5 steps
AFTER_SAVE = 15     # steps after a save its background write may still slow


def logged_intervals(model_dir: pathlib.Path) -> list:
    bindings = figures.read_gin_bindings(model_dir / "config.gin")
    records = [r for r in figures.read_jsonl(model_dir / "metrics.jsonl")
               if "tokens_per_second" in r]
    return figures.intervals(records, figures.tokens_per_step(bindings))


def _near(interval, save_step: int) -> bool:
    """The interval overlaps steps (save_step - LOG_EVERY, save_step + AFTER_SAVE]."""
    return (interval.first_step < save_step + AFTER_SAVE
            and interval.last_step > save_step - LOG_EVERY)


def around_saves(intervals: list, train_steps: int, save_every: int) -> dict:
    """Clean ms per step, and the ms that each save before the last adds outside its block.

    Left out: the first interval (compile) and the last one (the final save, which every
    run makes)."""
    saves = list(range(save_every, train_steps, save_every))
    body = [i for i in intervals if i.first_step > 0 and i.last_step < train_steps]
    clean = [i for i in body if not any(_near(i, step) for step in saves)]
    if not clean:
        raise figures.BenchError("no logged interval away from the saves; use more --steps "
                                 "or a longer --save_every")
    clean_s = statistics.median(i.seconds / i.steps for i in clean)
    added = [sum(i.seconds - i.steps * clean_s for i in body if _near(i, step))
             for step in saves]
    return {"clean_step_ms": 1000 * clean_s,
            "outside_block_ms_each_save": [1000 * seconds for seconds in added]}
