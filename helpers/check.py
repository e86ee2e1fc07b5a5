"""Check your answer: compare your function with a reference on random inputs, CS231n-style.

    helpers.check(my_conv, F.conv2d, helpers.random_inputs((2, 3, 8, 8), (4, 3, 3, 3)))

prints the relative error of every case and whether it is small enough. A correct float64 answer gives
errors around 1e-15; a wrong one gives errors near 1 (the same size as the numbers themselves).
"""

import torch


def rel_error(x, y):
    """max |x - y| / max(1e-8, |x| + |y|) over every element: 0 for equal tensors, about 1 for unrelated ones.

    x, y: tensors (or numbers) of the same shape. Relative, so that the verdict does not depend on how
    large the numbers are; the 1e-8 keeps it finite where both are 0.
    """
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: yours {tuple(x.shape)}, the reference {tuple(y.shape)}")
    if x.numel() == 0:
        return 0.0
    return ((x - y).abs() / (x.abs() + y.abs()).clamp_min(1e-8)).max().item()


def random_inputs(*shapes, cases=3, seed=0, dtype=torch.float64):
    """`cases` argument tuples of standard-normal tensors with the given shapes, from a fixed seed.

    shapes: one tuple per argument, e.g. (2, 3, 8, 8) for an input and (4, 3, 3, 3) for a weight.
    float64 by default, so that rounding does not hide a wrong answer or fake one.
    """
    generator = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes) for _ in range(cases)]


def check(yours, reference, inputs, tol=1e-7):
    """Run yours(*args) and reference(*args) for every args in inputs; print each relative error and a verdict.

    inputs: a list of argument tuples (random_inputs makes one). Returns True when every case is below tol.
    A shape mismatch, or None returned, is reported as a failed case, not raised, so you see every case at once.
    """
    ok = True
    for i, args in enumerate(inputs, 1):
        mine, theirs = yours(*args), reference(*args)
        try:
            if mine is None:  # the commonest slip: the last line computes the answer but does not return it
                raise ValueError("your function returned None (expected a tensor): did you forget `return`?")
            error = rel_error(mine, theirs)
            line = f"relative error {error:.1e}"
            passed = error < tol
        except ValueError as wrong:
            line, passed = str(wrong), False
        ok &= passed
        print(f"case {i}: {line}  {'ok' if passed else 'WRONG'}")
    print(f"all {len(inputs)} cases below {tol:g}: correct" if ok else "not yet: compare the shapes and values above")
    return ok
