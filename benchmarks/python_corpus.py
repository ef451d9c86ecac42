"""Write a plain-text corpus nobody tuned on: the Python standard library's own source files
(PSF licence, already on every machine that runs us), concatenated in sorted order, the first
--chars characters. For the "never hurts" check on text a user brings (docs/results.md).

    python benchmarks/python_corpus.py runs/python_stdlib.txt
"""
import argparse
import pathlib
import sysconfig


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--chars", type=int, default=3_000_000)
    args = p.parse_args()
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for f in sorted(root.glob("*.py")):
        t = f.read_text(encoding="utf-8", errors="replace")
        parts.append(t)
        n += len(t)
        if n >= args.chars:
            break
    text = "\n".join(parts)[: args.chars]
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text, encoding="utf-8")
    print(f"{args.out}: {len(text)} characters from {len(parts)} files under {root}")


if __name__ == "__main__":
    main()
