"""The selection scan keeps a bounded per-class top-k and selects exactly what sorting every rate selected."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from memprune.errors import MempruneError
from memprune.evaluators.audit_candidates import Candidate, scan_hit_rates, select_candidates
from memprune.evaluators.audit_scan import TopPerClass, replay_log, scan_top
from tests.evaluators.audit_fakes import ScriptedModel, make_images


def _sorted_reference(scored: list[Candidate], per_class: int) -> list[Candidate]:
    """The selection before the heaps: sort each class by (-rate, id) and keep the first ``per_class``."""
    by_class: dict[int, list[Candidate]] = {}
    for c in scored:
        by_class.setdefault(c.label, []).append(c)
    out: list[Candidate] = []
    for label in sorted(by_class):
        out += sorted(by_class[label], key=lambda c: (-c.hit_rate, c.id))[:per_class]  # type: ignore[operator]
    return out


def test_heaps_keep_what_sorting_every_rate_keeps_ties_included():
    rng = random.Random(0)
    for trial in range(30):
        n, classes = rng.randint(1, 300), rng.randint(1, 7)
        # Few distinct rates: most images tie with others of their class.
        scored = [Candidate(Path(f"{i}.png"), rng.randrange(classes), f"img{rng.randrange(10 ** 6):06d}_{i}",
                            rng.choice([0.0, 0.25, 0.5, 0.5, 0.75, 1.0])) for i in range(n)]
        for k in (1, 2, 5, 50):
            expected = _sorted_reference(scored, k)
            for _ in range(3):  # any arrival order (resumed, sharded, distributed scans) keeps the same
                order = scored[:]
                rng.shuffle(order)
                top = TopPerClass(k)
                for c in order:
                    top.add(c, c.hit_rate)  # type: ignore[arg-type]
                assert top.ranked() == expected, (trial, k)
                assert len(top) == len(expected) <= k * classes  # bounded by classes x k


def _rates(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.choice([0.1, 0.3, 0.3, 0.6, 0.9]) for _ in range(n)]


@pytest.fixture()
def scanned(tmp_path):
    cands, truths = make_images(tmp_path / "img", 10)
    rates = _rates(10)
    return cands, truths, rates


def test_the_scan_selects_what_sorting_selected_and_holds_only_the_top(scanned, tmp_path):
    cands, truths, rates = scanned
    model = ScriptedModel(truths, [lambda *a: False] * 10, hit_rates=rates)
    tops = scan_top({"model": model}, cands, 2, batch_size=3, logs={"model": tmp_path / "scan.jsonl"})
    rated = scan_hit_rates(model, cands, batch_size=3)  # every rate, as the scan kept them before the heaps
    assert sorted({c.hit_rate for c in rated}) == [0.09375, 0.296875, 0.59375, 0.90625]  # ties within classes
    assert tops["model"].ranked() == _sorted_reference(rated, 2)
    assert len(tops["model"]) == 4  # 2 classes x 2, not 10
    logged = [json.loads(line) for line in (tmp_path / "scan.jsonl").read_text().splitlines()]
    assert [row["id"] for row in logged] == [c.id for c in cands]  # every image, in image order: the ranking
    assert [c.id for c in select_candidates({"model": model}, cands, 2, batch_size=3)] == \
        [c.id for c in _sorted_reference(rated, 2)]


def test_a_killed_scan_resumes_at_the_first_missing_batch_with_the_same_picks(scanned, tmp_path):
    cands, truths, rates = scanned
    logs = {"baseline": tmp_path / "scan.jsonl", "model": tmp_path / "scan_model.jsonl"}
    fresh = {"baseline": ScriptedModel(truths, [], hit_rates=rates),
             "model": ScriptedModel(truths, [], hit_rates=list(reversed(rates)))}
    picked = select_candidates(fresh, cands, 2, batch_size=3, logs=logs)
    # Killed after batch 2 of the first model's log (a torn line) and batch 1 of the second's.
    lines = logs["baseline"].read_text().splitlines()
    logs["baseline"].write_text("\n".join(lines[:6]) + "\n" + lines[6][:20])
    logs["model"].write_text("\n".join(logs["model"].read_text().splitlines()[:3]) + "\n")
    again = {"baseline": ScriptedModel(truths, [], hit_rates=rates),
             "model": ScriptedModel(truths, [], hit_rates=list(reversed(rates)))}
    assert select_candidates(again, cands, 2, batch_size=3, logs=logs) == picked
    assert again["baseline"].calls["teacher_forced"] == 3  # batches 1, 2, 3 of 0..3: batch 0 was done by both
    assert [json.loads(x)["id"] for x in logs["baseline"].read_text().splitlines()] == [c.id for c in cands]
    assert [json.loads(x)["id"] for x in logs["model"].read_text().splitlines()] == [c.id for c in cands]


def test_a_log_that_does_not_follow_the_images_is_refused(scanned, tmp_path):
    cands, _, _ = scanned
    log = tmp_path / "scan.jsonl"
    log.write_text(json.dumps({"id": cands[1].id, "label": 1, "hit_rate": 0.5}) + "\n")
    with pytest.raises(MempruneError, match="the images changed since this scan"):
        replay_log(log, cands, TopPerClass(2))
    log.write_text("".join(json.dumps({"id": c.id, "label": c.label, "hit_rate": 0.5}) + "\n" for c in cands))
    with pytest.raises(MempruneError, match="there are 9 images"):
        replay_log(log, cands[:9], TopPerClass(2))
    assert replay_log(log, cands, TopPerClass(2)) == 10


def test_the_log_is_repaired_as_it_streams(scanned, tmp_path):
    cands, _, _ = scanned
    log = tmp_path / "scan.jsonl"
    rows = [json.dumps({"id": c.id, "label": c.label, "hit_rate": 0.5}) for c in cands[:3]]
    log.write_text("\n".join(rows))  # the last row is whole but lost its newline
    assert replay_log(log, cands, TopPerClass(1)) == 3 and log.read_text() == "\n".join(rows) + "\n"
    log.write_text("\n".join(rows) + "\n" + rows[0][:15])  # a torn row is cut off
    assert replay_log(log, cands, TopPerClass(1)) == 3 and log.read_text() == "\n".join(rows) + "\n"
    log.write_text(rows[0] + "\n{broken\n" + rows[1] + "\n")
    with pytest.raises(MempruneError, match="line 2 is not JSON"):
        replay_log(log, cands, TopPerClass(1))


def test_a_saved_ranking_is_streamed_into_the_same_top(scanned, tmp_path):
    from memprune.evaluators.audit_candidates import read_candidates, select_top_per_class
    from memprune.evaluators.audit_scan import top_of_ranking

    cands, _, rates = scanned
    log = tmp_path / "scan.jsonl"
    log.write_text("".join(json.dumps({"id": c.id, "label": c.label, "hit_rate": r}) + "\n" for c, r in zip(cands, rates)))
    data = cands[0].path.parent
    expected = select_top_per_class(read_candidates(log, data), 2)  # reads and checks every image
    assert top_of_ranking(log, data, 2) == expected
    unpicked = next(c for c in cands if c.id not in {e.id for e in expected})
    unpicked.path.unlink()  # only the selected images are looked up
    assert top_of_ranking(log, data, 2) == expected
    expected[0].path.unlink()
    with pytest.raises(MempruneError, match="do not exist"):
        top_of_ranking(log, data, 2)
