"""Source-code fixtures shared by the corpus and pipeline tests."""


def module(name: str, n: int) -> str:
    """A module with n distinct documented functions, no two of them near duplicates."""
    return "".join(
        f"def {name}_f{i}(a, b):\n    \"\"\"Combine a and b with rule {i} for {name}.\"\"\"\n"
        f"    c = a * {i} + b - {name!r}.count('x')\n    d = [c] * {i + 1}\n    return sum(d) + len('{name}{i}')\n\n"
        for i in range(n)
    )
