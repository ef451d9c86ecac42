"""Write the held-out documentation corpora of docs/results.md (rounds 10 and 11) as plain text.

    python benchmarks/doc_corpora.py pydoc runs/pydoc_topics.txt   # Python 3.11's language reference
    python benchmarks/doc_corpora.py rust-book runs/rust_book.txt  # "The Rust Programming Language"
    python benchmarks/doc_corpora.py rust-book runs/cargo_book.txt --html ~/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/cargo/print.html
    python benchmarks/doc_corpora.py man runs/man1.txt             # the machine's section-1 man pages

`pydoc`: the topic texts of `pydoc_data.topics` (shipped with CPython, PSF licence), in key order.
`rust-book`: the one-page HTML of the Rust book that `rustup` installs (MIT/Apache-2.0), tags
stripped, entities decoded, runs of blank lines collapsed; `--html` points at another copy or at
another mdBook's print.html (round 12 used the Cargo book's).
`man`: the section-1 manual pages installed on the machine, rendered by `man` at 80 columns
(`MANWIDTH=80 man -P cat`, overstrikes removed), in name order, until `--chars` characters
(licences vary per page: GPL, BSD, ...; read locally, never redistributed).
None is vendored: each is made on the machine that runs the experiment.
"""
import argparse
import html.parser
import pathlib
import re

RUST_BOOK = "~/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/book/print.html"


class _Text(html.parser.HTMLParser):
    """Collects the text of the page's <main> element, skipping scripts and styles."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.depth, self.skip = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.depth += 1
        if tag in ("script", "style"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag == "main":
            self.depth -= 1
        if tag in ("script", "style"):
            self.skip -= 1
        if tag in ("p", "pre", "li", "h1", "h2", "h3", "h4", "tr", "div"):
            self.parts.append("\n")

    def handle_data(self, data):
        if self.depth > 0 and self.skip == 0:
            self.parts.append(data)


def rust_book(path: str) -> str:
    page = pathlib.Path(path).expanduser()
    if not page.is_file():
        raise SystemExit(f"{page} not found: install a Rust toolchain with rustup, or pass --html")
    parser = _Text()
    parser.feed(page.read_text(encoding="utf-8"))
    text = "".join(parser.parts)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip() + "\n"


def pydoc_topics() -> str:
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))


def man_pages(limit: int, section: str = "1") -> str:
    import os
    import subprocess
    names = sorted({re.sub(r"\.%s[^.]*(\.gz)?$" % section, "", f.name)
                    for f in pathlib.Path(f"/usr/share/man/man{section}").iterdir()})
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="0")
    pages, size = [], 0
    for name in names:
        r = subprocess.run(["man", "-P", "cat", section, name], env=env, capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip():
            continue
        text = re.sub(r".\x08", "", r.stdout)  # bold/underline overstrikes
        text = re.sub(r"\n\s*\n+", "\n\n", text).strip() + "\n\n"
        pages.append(text)
        size += len(text)
        if size >= limit:
            break
    if size < limit:
        raise SystemExit(f"only {size:,} characters of section-{section} man pages here; asked for {limit:,}")
    return "".join(pages)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("corpus", choices=["pydoc", "rust-book", "man"])
    p.add_argument("out")
    p.add_argument("--html", default=RUST_BOOK, help="an mdBook's print.html (default: the Rust book's)")
    p.add_argument("--chars", type=int, default=1_300_000, help="man: stop after this many characters")
    args = p.parse_args()
    if args.corpus == "pydoc":
        text = pydoc_topics()
    elif args.corpus == "man":
        text = man_pages(args.chars)
    else:
        text = rust_book(args.html)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"{out}: {len(text):,} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()
