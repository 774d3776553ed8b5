#!/usr/bin/env python3
"""Runs the commands README.md tells a user to type, as README.md writes them.

Every line of a ```sh block in README.md is a command; a trailing backslash
continues it on the next line. Each command is run with bash from the top of
the checkout, in README order, and must exit 0. Two kinds are not run:

- commands after a comment line that says "needs a bare-metal KVM host", up
  to the end of that block, or with that phrase in their own comment: they
  boot a real kernel, which these machines' paravirtual /dev/kvm cannot;
- `.ci/run`, which is the script running this one.

`--require TEXT` (repeatable) fails the check unless a command that was run
contains TEXT, so that CI notices when README.md drops a command CI relies
on (the lab runs through README.md's own lab command).

At the end it prints every command and what became of it.
"""

import argparse
import os
import re
import subprocess
import sys
import time

MARKER = "needs a bare-metal KVM host"
SELF = ".ci/run"


def split_comment(line):
    """Splits `cmd  # comment` outside quotes; returns (cmd, comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1 :].strip()
    return line.rstrip(), ""


def commands(readme):
    """Yields (line number, command, skip reason or None) for each command."""
    in_block = False
    bare_metal = False
    pending, start = "", 0
    for n, raw in enumerate(readme.splitlines(), 1):
        fence = raw.strip()
        if fence.startswith("```"):
            if in_block and pending:
                raise SystemExit(f"README.md:{start}: command continues past its block")
            in_block = fence == "```sh" if not in_block else False
            bare_metal = False
            continue
        if not in_block:
            continue
        line = raw.rstrip()
        if line.endswith("\\"):
            if not pending:
                start = n
            pending += line[:-1] + " "
            continue
        if pending:
            line, pending = pending + line.strip(), ""
        else:
            start = n
        cmd, comment = split_comment(line)
        if not cmd.strip():
            bare_metal = bare_metal or MARKER in comment
            continue
        cmd = re.sub(r"\s+", " ", cmd.strip())
        if bare_metal or MARKER in comment:
            yield start, cmd, MARKER
        elif cmd == SELF:
            yield start, cmd, "this check runs inside it"
        else:
            yield start, cmd, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--require", action="append", default=[])
    ap.add_argument("--timeout", type=int, default=2400, help="seconds per command")
    args = ap.parse_args()
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(top, args.readme)
    with open(path, encoding="utf-8") as f:
        found = list(commands(f.read()))
    if not found:
        raise SystemExit(f"{path}: no ```sh command blocks found")

    results = []
    for lineno, cmd, skip in found:
        if skip:
            results.append((lineno, cmd, f"not run: {skip}"))
            continue
        print(f"=== README.md:{lineno}: {cmd}", flush=True)
        t0 = time.monotonic()
        try:
            rc = subprocess.run(
                ["bash", "-eo", "pipefail", "-c", cmd],
                cwd=top,
                stdin=subprocess.DEVNULL,
                timeout=args.timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        secs = time.monotonic() - t0
        results.append((lineno, cmd, f"ran: exit {rc} in {secs:.1f} s"))
        if rc != 0:
            print(f"README.md:{lineno}: `{cmd}` failed (exit {rc})", file=sys.stderr)

    print("\n=== README.md commands and how CI checked them")
    for lineno, cmd, what in results:
        print(f"  README.md:{lineno:<4} {what:<40} {cmd}")
    failed = [r for r in results if r[2].startswith("ran:") and not r[2].startswith("ran: exit 0 ")]
    ran = [cmd for _, cmd, what in results if what.startswith("ran:")]
    missing = [req for req in args.require if not any(req in cmd for cmd in ran)]
    for req in missing:
        print(f"README.md: no command that CI runs contains `{req}`", file=sys.stderr)
    if failed or missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
