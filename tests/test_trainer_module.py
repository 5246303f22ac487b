"""The Trainer's own choices, apart from the models and losses it trains."""
import pytest

from hap.data import contract as c
from hap.models import request_records
from hap.models.trainer_module import TrainerSettings, validation_requests


def _eval_split(requests: int, positives: int) -> request_records.RequestRecords:
    return request_records.RequestRecords(files=("eval",), requests=requests,
                                          samples_by_group={**dict.fromkeys(c.SAMPLE_GROUPS, 10 * requests), c.EP: positives},
                                          feature_spec={}, context=())


@pytest.mark.parametrize("requests, positives, expected", [
    (10_000, 15_000, 1_334),  # 1.5 positives a request: ceil(2,000 / 1.5)
    (1_000, 1_500, 1_000),    # fewer positives than wanted: the whole split
    (100_000, 1_000, 5_000),  # rare clicks: the request cap (ceil(2,000 / 0.01) = 200,000 wanted)
    (3_000, 0, 3_000),        # no positives to count by: the whole split, up to the cap
    (9_000, 0, 5_000),
])
def test_validation_reads_the_requests_that_hold_the_wanted_positives_up_to_the_cap(requests, positives, expected):
    settings = TrainerSettings(eval_positives=2_000, eval_requests=5_000)
    assert validation_requests(_eval_split(requests, positives), settings) == expected


def test_validation_sizes_are_whole_numbers_of_at_least_one():
    with pytest.raises(ValueError, match="eval_positives must be an integer >= 1, got 0"):
        TrainerSettings(eval_positives=0)
