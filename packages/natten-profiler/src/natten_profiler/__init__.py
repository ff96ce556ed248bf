"""natten-profiler: profile, tune and simulate neighborhood attention (natten) use cases.

Command line: ``natten-profiler --help`` (or ``python -m natten_profiler``) profiles a use case;
``natten-profiler sim --help`` simulates tile-visit bounds without a GPU.

Python: :mod:`natten_profiler.simulator` (tile-visit bounds), :mod:`natten_profiler.best_configs`
(the best-configurations file natten reads through ``NATTEN_BEST_CONFIGS``).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "main"]


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    from .cli import main as _main

    return _main(argv)
