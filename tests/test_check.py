import torch
import torch.nn.functional as F

from helpers import check, conv2d, random_inputs, rel_error


def test_rel_error_is_zero_for_equal_and_about_one_for_unrelated():
    x, y = random_inputs((100,), (100,), cases=1)[0]
    assert rel_error(x, x) == 0
    assert rel_error(x, -x) == 1
    assert 0.5 < rel_error(x, y) <= 1
    assert rel_error(torch.zeros(3), torch.zeros(3)) == 0


def test_check_passes_the_series_conv_and_fails_a_flipped_kernel(capsys):
    inputs = random_inputs((2, 3, 8, 8), (4, 3, 3, 3), cases=2)
    assert check(conv2d, F.conv2d, inputs)

    def flipped(x, w):
        return F.conv2d(x, w.flip(2, 3))  # true convolution, not cross-correlation

    assert not check(flipped, F.conv2d, inputs)
    out = capsys.readouterr().out
    assert "all 2 cases below 1e-07: correct" in out and "WRONG" in out


def test_check_reports_a_shape_mismatch_instead_of_raising(capsys):
    inputs = random_inputs((2, 3, 8, 8), (4, 3, 3, 3), cases=1)
    assert not check(lambda x, w: F.conv2d(x, w, padding=1), F.conv2d, inputs)
    assert "shapes differ: yours (2, 4, 8, 8), the reference (2, 4, 6, 6)" in capsys.readouterr().out


def test_check_reports_a_function_that_returns_none_instead_of_raising(capsys):
    def forgot_return(x, w):
        F.conv2d(x, w)

    assert not check(forgot_return, F.conv2d, random_inputs((2, 3, 8, 8), (4, 3, 3, 3), cases=2))
    out = capsys.readouterr().out
    assert out.count("your function returned None (expected a tensor): did you forget `return`?  WRONG") == 2
    assert "not yet" in out
