"""Write the held-out documentation corpora of docs/results.md (rounds 10 and 11) as plain text.

    python benchmarks/doc_corpora.py pydoc runs/pydoc_topics.txt   # Python 3.11's language reference
    python benchmarks/doc_corpora.py rust-book runs/rust_book.txt  # "The Rust Programming Language"

`pydoc`: the topic texts of `pydoc_data.topics` (shipped with CPython, PSF licence), in key order.
`rust-book`: the one-page HTML of the Rust book that `rustup` installs (MIT/Apache-2.0), tags
stripped, entities decoded, runs of blank lines collapsed; `--html` points at another copy.
Neither is vendored: each is made on the machine that runs the experiment.
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("corpus", choices=["pydoc", "rust-book"])
    p.add_argument("out")
    p.add_argument("--html", default=RUST_BOOK, help="the Rust book's print.html")
    args = p.parse_args()
    text = pydoc_topics() if args.corpus == "pydoc" else rust_book(args.html)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"{out}: {len(text):,} characters, {len(set(text))} distinct")


if __name__ == "__main__":
    main()
