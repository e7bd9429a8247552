"""bench/reliability.py writes each row's outcome from what its tests measured, and a row passes only when
every test behind it ran, passed and measured what the row says."""

from __future__ import annotations

from bench import reliability

SERVERS = {"servers": 2, "steps": 200, "attempts": 211, "per_server": [105, 106], "lost": 11,
           "replayed_elsewhere": 11, "applied": 200, "identical": True}
NODE = "tests/faults/test_two_servers.py::test_two_servers_on_one_database_and_redis_apply_every_step_exactly_once"


def scale_out_row(records: dict) -> reliability.Row:
    return next(r for r in reliability.rows(records, None) if r.tests == ["tests/faults/test_two_servers.py"])


def test_the_scale_out_row_is_written_from_the_measured_values():
    row = scale_out_row({"scale_out:servers": [SERVERS]})
    assert "200 steps in 211 attempts (105 and 106 per process); 11 answers lost" in row.tried
    assert "11 of the 11 lost answers given again" in row.outcome and "count 200" in row.outcome
    assert "bit-identical" in row.outcome
    other = scale_out_row({"scale_out:servers": [{**SERVERS, "lost": 9, "replayed_elsewhere": 8,
                                                  "identical": False}]})
    assert "8 of the 9 lost answers" in other.outcome and "NOT identical" in other.outcome


def test_a_row_claims_nothing_that_was_not_measured():
    row = scale_out_row({})
    assert "bit-identical" not in row.outcome and "?" in row.outcome and "?" in row.tried


def test_a_row_passes_only_when_its_tests_passed_and_measured():
    row = scale_out_row({"scale_out:servers": [SERVERS]})
    measured = {"scale_out:servers": [SERVERS]}
    assert reliability.settle(row, [(NODE, "passed")], measured) == "passed"
    assert reliability.settle(row, [(NODE, "passed")], {}).startswith("partial (not measured")
    assert reliability.settle(row, [(NODE, "passed"), (NODE + "[x]", "skipped")], measured).startswith("partial")
    assert reliability.settle(row, [(NODE, "skipped")], measured) == "skipped"
    assert reliability.settle(row, [(NODE, "failed")], measured).startswith("FAILED")
    assert reliability.settle(row, [], measured) == "not run"
    # A measurement left out of the record: the row says `?` there, and does not pass.
    partly = scale_out_row({"scale_out:servers": [{k: v for k, v in SERVERS.items() if k != "lost"}]})
    assert reliability.settle(partly, [(NODE, "passed")], measured).startswith("partial (a measurement")
