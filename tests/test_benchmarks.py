"""benchmarks/choices.py runs, and every alternative it races computes what the chosen version computes."""

from benchmarks import choices


def test_choices_races_equivalent_versions(capsys):
    choices.main(["--repeats", "1"])  # each row asserts that its two versions agree before racing them
    rows = capsys.readouterr().out.strip().splitlines()[3:]
    assert len(rows) == 5
