"""The checkpoint record: what a checkpoint's `meta` item says about its run.

Written by training and by `import-hf`, read by resume, rollback, eval, infer and export.
Records written before this schema (no `format` key) keep the data description at the
top level and name no family; `from_json` reads both layouts.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

FORMAT = 2
LEGACY_FAMILY = "decoder"


@dataclasses.dataclass(frozen=True)
class DataRecord:
    """The data a run trained on, and what one step of its data position holds."""

    mixture_or_task_name: str | None = None
    task_feature_lengths: dict[str, int] | None = None
    global_batch_size: int | None = None
    vocabulary: dict[str, Any] | None = None  # {"type", "vocab_size", "eos_id", "pad_id"}
    stream: dict[str, Any] | None = None  # token stores: {"seed", "stores": {task: fingerprint}}

    def position_unit(self) -> dict:
        """What a data position counts (rows of which lengths, drawn from which stores), as
        `resume_config` reads it."""
        return {key: value for key, value in (("global_batch_size", self.global_batch_size),
                                              ("task_feature_lengths", self.task_feature_lengths),
                                              ("stream", self.stream))
                if value is not None}


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    family: str
    model_config: dict[str, Any]
    data_position: int = 0
    data: DataRecord = DataRecord()
    gin_config: str = ""
    hf: dict[str, Any] | None = None  # the source of a checkpoint made by import-hf
    data_rows: int | None = None  # rows of the token-store stream consumed
    data_window: list[int] | None = None  # [window, its first row]: where rows of whole
    # examples are found from (at or before row `data_rows`)

    def row_offset(self, global_batch_size: int) -> int:
        """Rows consumed beyond `data_position` batches of `global_batch_size` rows: what a
        run resumed with another batch size adds to find its next unread row."""
        if self.data_rows is None:
            return 0
        return self.data_rows - self.data_position * global_batch_size

    def to_json(self) -> dict:
        record = {"format": FORMAT, "family": self.family, "model_config": self.model_config,
                  "data_position": self.data_position, "data": dataclasses.asdict(self.data),
                  "gin_config": self.gin_config}
        if self.data_rows is not None:
            record["data_rows"] = self.data_rows
        if self.data_window is not None:
            record["data_window"] = list(self.data_window)
        if self.hf is not None:
            record["hf"] = self.hf
        return record

    @classmethod
    def from_json(cls, meta: Mapping[str, Any]) -> "CheckpointRecord":
        if "format" not in meta:
            return _from_legacy(meta)
        return cls(family=meta["family"], model_config=dict(meta["model_config"]),
                   data_position=int(meta.get("data_position", 0)),
                   data=DataRecord(**meta.get("data") or {}),
                   gin_config=meta.get("gin_config", ""), hf=meta.get("hf"),
                   data_rows=meta.get("data_rows"), data_window=meta.get("data_window"))

    def model_config_of(self, config_type: type):
        """The family's config dataclass built from the record, ignoring unknown fields."""
        known = {field.name for field in dataclasses.fields(config_type)}
        return config_type(**{key: value for key, value in self.model_config.items()
                              if key in known})


def _from_legacy(meta: Mapping[str, Any]) -> CheckpointRecord:
    """A record in the first layout: data fields and the layer layout at the top level."""
    model_config = dict(meta.get("model_config") or {})
    if "scan_layers" in meta:
        model_config["scan_layers"] = bool(meta["scan_layers"])
    data = DataRecord(task_feature_lengths=meta.get("task_feature_lengths"),
                      global_batch_size=meta.get("global_batch_size"))
    return CheckpointRecord(family=LEGACY_FAMILY, model_config=model_config,
                            data_position=int(meta.get("data_position", 0)), data=data,
                            gin_config=meta.get("gin_config", ""), hf=meta.get("hf"))
