#!/usr/bin/env python3
"""Checks that every file path a design document names exists.

Usage: scripts/check-doc-paths.py [DOC.md ...] (default: the README, the
three design docs and docs/dr-semantics.md). A path is a backticked word or
a Markdown link target that looks like a file or directory (has a `/` or a
known extension, no spaces or placeholders in capitals). It is looked up
relative to the document's directory, the repository root, and the source
roots the documents abbreviate from (`agent/src/`, `engine/src/`, …) or,
for a path relative to the module a section is about, as the tail of a
tracked path; a bare file name (`hold.rs`) must exist somewhere in the
repository. Links to `FILE.md#anchor` must name a heading of FILE. Prints
each path or link not found and exits 1 if there is one.
"""
import os
import re
import subprocess
import sys

ROOT = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                      text=True, check=True).stdout.strip()
DOCS = ["README.md", "DESIGN.md", "engine/DESIGN.md", "agent/DESIGN.md",
        "docs/dr-semantics.md", "protocol/PROTOCOL.md", "RELIABILITY.md"]
BASES = ["", "agent", "agent/src", "engine", "engine/src", "protocol", "protocol/src",
         "tests", "tests/tests", "benches", "benches/src", "agent/console", "agent/console/js"]
# Files the agent or the engine writes at run time, an ALPN name, the
# manuals outside the repository: named in the docs, not in the repository.
RUNTIME = {"state.json", "qos.json", "rbd-source.json", "commits/rp-ID.json",
           "ferry-peer-api/1", "../seeds"}
EXT = re.compile(r"\.(rs|md|js|css|html|toml|yaml|yml|sh|py|json|svg|service|conf)$")
FILES = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                       check=True).stdout.split()
BASENAMES = {os.path.basename(f) for f in FILES}
DIRS = {os.path.dirname(f) for f in FILES}


def candidates(text):
    for m in re.finditer(r"`([^`\n]+)`", text):
        yield m.group(1)
    for m in re.finditer(r"\]\(([^)\s#]+)(#[^)]*)?\)", text):
        if not m.group(1).startswith(("http:", "https:", "mailto:")):
            yield m.group(1)


def looks_like_path(word):
    if " " in word or any(c in word for c in "*{}<>=$…|,;()'\"") or ":" in word:
        return False
    if re.search(r"[A-Z]{3,}", word):  # DIR/, GROUP, IMAGE: placeholders
        return False
    if re.fullmatch(r"[\d.]+[A-Za-z]*/s", word) or word == "x.rs":  # rates; an example name
        return False
    if word.startswith(("/", "-", "~", "$", ".ci")):
        return False
    return "/" in word.rstrip("/") or bool(EXT.search(word))


def exists(doc_dir, word):
    word = word.rstrip("/")
    if word in RUNTIME:
        return True
    if "/" not in word:
        return word in BASENAMES or word in {os.path.basename(d) for d in DIRS}
    for base in [doc_dir] + BASES:
        p = os.path.normpath(os.path.join(ROOT, base, word))
        if os.path.exists(p):
            return True
    # A path relative to the module a section is about (`store/handover.rs`
    # in the standby store's section): some tracked path must end with it.
    word = word.lstrip("./")
    return any(f.endswith("/" + word) or d.endswith("/" + word)
               for f, d in zip(FILES, map(os.path.dirname, FILES)))


def anchors(path):
    """GitHub's anchors of the headings of Markdown file `path`."""
    found = set()
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^#+\s+(.*)", line)
        if m:
            found.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return found


def broken_anchors(doc):
    """Links `[..](FILE.md#anchor)` / `(#anchor)` of `doc` to no heading."""
    text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
    for m in re.finditer(r"\]\(([^)\s]*?)#([^)\s]+)\)", text):
        target = os.path.normpath(os.path.join(os.path.dirname(doc), m.group(1))) if m.group(1) else doc
        path = os.path.join(ROOT, target)
        if target.endswith(".md") and os.path.exists(path) and m.group(2) not in anchors(path):
            yield f"{target}#{m.group(2)}"


def main():
    docs = sys.argv[1:] or DOCS
    missing = 0
    for doc in docs:
        path = os.path.join(ROOT, doc)
        if not os.path.exists(path):
            continue
        doc_dir = os.path.dirname(doc)
        seen = set()
        for word in candidates(open(path, encoding="utf-8").read()):
            if word in seen or not looks_like_path(word):
                continue
            seen.add(word)
            if not exists(doc_dir, word):
                print(f"{doc}: {word}")
                missing += 1
        for link in broken_anchors(doc):
            print(f"{doc}: link to no heading: {link}")
            missing += 1
    sys.exit(1 if missing else 0)


main()
