#!/usr/bin/env python3
"""Lists Rust functions longer than N lines (default 80), by brace matching.

    scripts/long-functions.py [N] [DIR ...]    # default: hub/src client/src auth/src

The style guide's limit is about 80 lines per function in src; prints
`file:line: name length` for each one over N and nothing when none is.
Brace matching ignores braces in strings, chars and // comments (good enough
for this code base; not a Rust parser).
"""
import glob
import re
import sys

FN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)")


def strip(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return re.sub(r"//.*", "", line)


def long_functions(path, limit):
    lines = open(path, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            s = strip(lines[j])
            depth += s.count("{") - s.count("}")
            started = started or "{" in s
            if started and depth <= 0:
                break
            if not started and s.rstrip().endswith(";"):
                break
            j += 1
        if started and j - i + 1 > limit:
            yield i + 1, m.group(5), j - i + 1


def main(argv):
    limit = int(argv[0]) if argv and argv[0].isdigit() else 80
    dirs = [a for a in argv if not a.isdigit()] or ["hub/src", "client/src", "auth/src"]
    for d in dirs:
        for path in sorted(glob.glob(d + "/**/*.rs", recursive=True)):
            for line, name, length in long_functions(path, limit):
                print(f"{path}:{line}: {name} {length} lines")


if __name__ == "__main__":
    main(sys.argv[1:])
