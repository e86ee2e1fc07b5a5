"""The benchmark scripts still run, and the alternatives they race compute the same thing."""

from benchmarks import choices


def test_choices_races_equivalent_versions(capsys):
    choices.main(["--repeats", "1"])  # asserts that every alternative gives the chosen gradient
    table = capsys.readouterr().out
    for what in ("conv2 input gradient", "pooling: compare", "pooling: mask * gradient", "evaluate 2,000 images"):
        assert what in table
