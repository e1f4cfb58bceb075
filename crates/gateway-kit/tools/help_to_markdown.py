#!/usr/bin/env python3
"""Turns a gateway binary's `--help` into the Markdown flag table of
docs/configuration.md, so the reference says what the binary says.

    help_to_markdown.py BINARY                 # print the table
    help_to_markdown.py BINARY --update FILE   # replace the generated block in FILE

The block in FILE sits between
    <!-- BEGIN generated from `NAME --help` -->
    <!-- END generated from `NAME --help` -->
where NAME is the binary's file name. Both binaries use clap's long help
(flags start a block, `[env: X=]`, `[default: X]` and `[possible values: ...]`
tags follow), which is all this relies on.
"""
import os
import re
import subprocess
import sys

FLAG = re.compile(r"^\s{2,}(?:-\w, )?(--[\w-]+)(?: <(\w+)>)?\s*$")
TAG = re.compile(r"\[(env|default|possible values): ([^\]]*)\]")


def parse(help_text):
    """[(flag, value_name, description, env, default, possible)] in order."""
    flags = []
    current = None
    for line in help_text.splitlines():
        m = FLAG.match(line)
        if m:
            current = {"flag": m.group(1), "value": m.group(2), "text": [], "env": "",
                       "default": "", "possible": ""}
            flags.append(current)
            continue
        if current is None:
            continue
        stripped = line.strip()
        tags = TAG.findall(stripped)
        for name, value in tags:
            if name == "env":
                current["env"] = value.rstrip("=")
            elif name == "default" and not current["default"]:
                current["default"] = value
            elif name == "possible values":
                current["possible"] = value
        stripped = TAG.sub("", stripped).strip()
        if stripped.startswith("- ") or stripped == "Possible values:":
            # clap's long list of possible values: keep the names only.
            if stripped.startswith("- "):
                name = stripped[2:].split(":", 1)[0]
                current["possible"] = ", ".join(filter(None, [current["possible"], name]))
            continue
        if stripped:
            current["text"].append(stripped)
    return flags


def cell(text):
    return text.replace("|", "\\|")


def table(flags):
    rows = ["| Flag | Environment variable | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in flags:
        if f["flag"] in ("--help", "--version"):
            continue
        text = " ".join(f["text"])
        # The [default: X] tag was taken out of the text; close the gap.
        text = re.sub(r"\s+([;,.])", r"\1", text).strip()
        if text and text[-1] not in ".!?":
            text += "."
        default = f["default"]
        if not default:
            if "Off unless" in text:
                default = "off"
            elif text.rstrip(".").endswith("Required"):
                default = "required"
            else:
                default = "—"
        if f["possible"]:
            text += f" Values: {f['possible']}."
        flag = f"`{f['flag']} {f['value']}`" if f["value"] else f"`{f['flag']}`"
        env = f"`{f['env']}`" if f["env"] else "—"
        default = f"`{default}`" if default not in ("—", "off", "required") else default
        rows.append(f"| {flag} | {env} | {cell(default)} | {cell(text)} |")
    return "\n".join(rows) + "\n"


def main():
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and sys.argv[2] != "--update"):
        sys.exit(__doc__)
    binary = sys.argv[1]
    help_text = subprocess.run([binary, "--help"], check=True, capture_output=True,
                               text=True, env={**os.environ, "NO_COLOR": "1"}).stdout
    generated = table(parse(help_text))
    if len(sys.argv) == 2:
        sys.stdout.write(generated)
        return
    name = os.path.basename(binary)
    begin = f"<!-- BEGIN generated from `{name} --help` -->\n"
    end = f"<!-- END generated from `{name} --help` -->"
    path = sys.argv[3]
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    start, stop = doc.find(begin), doc.find(end)
    if start < 0 or stop < start:
        sys.exit(f"{path}: no block {begin.strip()} ... {end}")
    doc = doc[: start + len(begin)] + generated + doc[stop:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
