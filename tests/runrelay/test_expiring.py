"""The expiring map behind the API key cache and the admission cache: an answer is trusted for
its time and no longer, a None answer is an answer, and the size stays bounded."""

from __future__ import annotations

from runrelay.server.expiring import Expiring


def test_an_answer_is_fresh_for_its_time_and_none_is_an_answer() -> None:
    answers: Expiring[str, int | None] = Expiring(1.0, 10)
    answers.put("unknown", None, read_at=100.0)
    answers.put("known", 7, read_at=100.0)
    assert answers.fresh("unknown", 100.9) == (100.0, None)
    assert answers.fresh("known", 100.9) == (100.0, 7)
    assert answers.fresh("known", 101.0) is None
    assert answers.fresh("never", 100.0) is None
    answers.pop("known")
    answers.keep(lambda entry: entry[1] is not None)
    assert answers.fresh("known", 100.5) is None and answers.fresh("unknown", 100.5) is None


def test_past_its_size_the_expired_answers_go_first_then_all() -> None:
    answers: Expiring[int, int] = Expiring(1.0, 3)
    answers.put(1, 1, read_at=0.0)
    answers.put(2, 2, read_at=5.0)
    answers.put(3, 3, read_at=5.0)
    answers.put(4, 4, read_at=5.5)  # full: 1 has expired and goes
    assert [answers.fresh(k, 5.5) is not None for k in (1, 2, 3, 4)] == [False, True, True, True]
    answers.put(5, 5, read_at=5.6)  # full of fresh answers: all go
    assert [answers.fresh(k, 5.6) is not None for k in (2, 3, 4, 5)] == [False, False, False, True]
