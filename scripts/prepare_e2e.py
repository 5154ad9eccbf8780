"""Split E2E NLG into private (user) and public (provider) files by whole meaning representations.

    python scripts/prepare_e2e.py [--e2e ../shared/data/e2e] [--out runs/e2e-data] [--test-mrs 100]

Writes OUT/train.csv and OUT/validation.csv (the challenge's dev set, split 90/10 by MR: the user's
private data), OUT/test.csv (--test-mrs test MRs with all their references: the evaluation split),
OUT/public.csv (the other test MRs, MR column only: the provider's public transfer inputs) and
OUT/public_corpus.jsonl (those public MRs with their references, formatted with the task template: the
provider's distillation corpus). No MR is in two files (checked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--e2e", default="../shared/data/e2e")
    ap.add_argument("--out", default="runs/e2e-data")
    ap.add_argument("--test-mrs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from promptport.generation import prepare_e2e

    info = prepare_e2e(args.e2e, args.out, n_test_mrs=args.test_mrs, seed=args.seed)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    return info


if __name__ == "__main__":
    main()
