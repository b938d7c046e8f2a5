"""Encoder-decoder objectives as data: the embedded denoising Tasks on the seqio stream,
and on token stores, where row g is raw row g denoised with the key of (seed, g)."""

import dataclasses
import itertools

import numpy as np
import pytest
import seqio

from t5x_lite.data import lm_task
from t5x_lite.errors import ConfigError
from t5x_lite.models.encdec import ENCDEC
from t5x_lite.pipeline import input_pipeline, vocabularies
from t5x_lite.pipeline.denoising import reconstruct
from t5x_lite.pipeline.input_pipeline import DataConfig
from t5x_lite.pipeline.objectives import PARADIGM_TOKENS, Objective
from tests.helpers import assert_same_batches

LENGTHS = {"inputs": 64, "targets": 16}
BATCH = 4
VOCABULARY = lm_task.vocabulary("byte_t5")
FIRST_SENTINEL = VOCABULARY.vocab_size - 1


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return tmp_path_factory.mktemp("stores")


def _config(stores, name="embedded_span_corruption", **overrides) -> DataConfig:
    return DataConfig(name, LENGTHS, BATCH, store_dir=str(stores), **overrides)


def _stream(cfg, split="train"):
    return input_pipeline._store_stream(cfg, split, cfg.shuffle, cfg.seed, ENCDEC)  # noqa: SLF001


def _examples(packed, side):
    """Each row's tokens of `side` (one example per row)."""
    return [row[ids == 1] for row, ids in zip(packed[side], packed[f"{side}_segment_ids"])]


@pytest.fixture(scope="module")
def continuous(stores):
    cfg = _config(stores)
    assert input_pipeline.uses_store(cfg)
    return list(itertools.islice(input_pipeline.train_batches(cfg, 0, 0, 1, ENCDEC), 12))


def test_store_rows_are_the_raw_rows_span_corrupted_by_their_keys(stores):
    stream = _stream(_config(stores, seed=3))
    rows = np.arange(40, 48)
    packed = stream.packed_rows(rows)
    raw_RL = stream.raw_rows.packed_rows(rows)["targets"]
    for inputs, targets, raw_L in zip(_examples(packed, "inputs"), _examples(packed, "targets"),
                                      raw_RL):
        assert len(inputs) == LENGTHS["inputs"] and len(targets) <= LENGTHS["targets"]
        assert inputs[-1] == targets[-1] == VOCABULARY.eos_id
        np.testing.assert_array_equal(reconstruct(inputs[:-1], targets[:-1], FIRST_SENTINEL),
                                      raw_L)
        assert targets[0] == FIRST_SENTINEL
    assert_same_batches([stream.packed_rows(rows)], [packed])
    reseeded = _stream(_config(stores, seed=4))
    assert not np.array_equal(reseeded.packed_rows(rows)["inputs"], packed["inputs"])


@pytest.mark.parametrize("position", [3, 7])
def test_a_resume_at_any_position_continues_the_stream(stores, continuous, position):
    resumed = input_pipeline.train_batches(_config(stores), position, 0, 1, ENCDEC)
    assert_same_batches(list(itertools.islice(resumed, 2)), continuous[position:position + 2])


def test_processes_read_their_own_rows_of_the_same_global_batches(stores, continuous):
    parts = [list(itertools.islice(input_pipeline.train_batches(_config(stores), 5, p, 2,
                                                                ENCDEC), 2))
             for p in range(2)]
    joined = [{key: np.concatenate([part[i][key] for part in parts]) for key in parts[0][0]}
              for i in range(2)]
    assert_same_batches(joined, continuous[5:7])


def test_batches_hold_the_encoder_decoder_features(continuous):
    batch = continuous[0]
    assert batch["encoder_input_tokens"].shape == (BATCH, LENGTHS["inputs"])
    assert batch["decoder_target_tokens"].shape == (BATCH, LENGTHS["targets"])
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                  batch["decoder_target_tokens"][:, :-1]
                                  * (batch["decoder_segment_ids"][:, 1:] == 1))
    np.testing.assert_array_equal(batch["decoder_loss_weights"],
                                  batch["decoder_target_tokens"] != 0)


def test_ul2_rows_lead_with_the_paradigm_token_of_their_denoiser(stores):
    packed = _stream(_config(stores, name="embedded_ul2")).packed_rows(np.arange(64))
    first_extra_id = VOCABULARY.vocab_size - VOCABULARY.extra_ids
    paradigm_ids = {first_extra_id + i for i in range(len(PARADIGM_TOKENS))}
    leads = [int(inputs[0]) for inputs in _examples(packed, "inputs")]
    assert set(leads) == paradigm_ids  # R, S and X denoisers all drawn
    for inputs, targets in zip(_examples(packed, "inputs"), _examples(packed, "targets")):
        assert len(inputs) <= LENGTHS["inputs"] and len(targets) <= LENGTHS["targets"]
        assert inputs[-1] == targets[-1] == VOCABULARY.eos_id


def test_the_seqio_task_gives_span_corrupted_examples_keyed_by_its_seed():
    def examples(seed):
        dataset = seqio.get_mixture_or_task("embedded_prose_span_corruption").get_dataset(
            LENGTHS, split="validation", shuffle=False, seed=seed)
        return list(itertools.islice(dataset.as_numpy_iterator(), 4))

    first = examples(1)
    for example in first:
        inputs, targets = example["inputs"], example["targets"]
        assert len(inputs) == LENGTHS["inputs"] and inputs[-1] == targets[-1] == 1
        assert len(reconstruct(inputs[:-1], targets[:-1], FIRST_SENTINEL)) == (
            Objective.span_corruption().raw_length(LENGTHS))
    assert_same_batches(examples(1), first)
    assert not np.array_equal(examples(2)[0]["inputs"], first[0]["inputs"])


def test_a_vocabulary_without_enough_extra_ids_is_refused():
    with pytest.raises(ConfigError, match="free extra ids"):
        Objective.span_corruption().check(LENGTHS, vocabularies.byte_vocabulary())
    with pytest.raises(ConfigError, match="free extra ids"):
        Objective.ul2().check({"inputs": 1024, "targets": 512}, VOCABULARY)


def test_a_mixture_of_two_objectives_is_refused(stores):
    seqio.MixtureRegistry.remove("two_objectives")
    seqio.MixtureRegistry.add("two_objectives", [("embedded_code_span_corruption", 1.0),
                                                 ("embedded_code_prefix_lm", 1.0)])
    with pytest.raises(ConfigError, match="different objectives"):
        input_pipeline.store_lengths(_config(stores, name="two_objectives"))


def test_a_denoising_mixture_with_other_settings_is_registered_from_gin(stores):
    from t5x_lite.data.denoising_tasks import denoising_mixture
    name = denoising_mixture(noise_density=0.3, mean_span_length=2.0)
    assert name == "embedded_span_corruption_d0.3_s2"
    lengths = {"inputs": 64, "targets": 40}  # room for all of a row's targets
    packed = _stream(dataclasses.replace(_config(stores, name), task_feature_lengths=lengths)
                     ).packed_rows(np.arange(16))
    noise = sum(len(targets) - 1 for targets in _examples(packed, "targets"))
    spans = sum(int((targets >= FIRST_SENTINEL - 40).sum()) for targets in
                _examples(packed, "targets"))
    raw = Objective.span_corruption(0.3, 2.0).raw_length(lengths)
    assert abs((noise - spans) / (16 * raw) - 0.3) < 0.03
