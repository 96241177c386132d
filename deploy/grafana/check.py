#!/usr/bin/env python3
"""Checks that every metric the Grafana dashboard queries is one Herald exports.

    python3 deploy/grafana/check.py deploy/grafana/herald.json metrics.txt

`metrics.txt` is a scrape of a node's `/metrics`. The script reads every PromQL expression of the
dashboard (panel targets, nested rows included, and the template variables' queries), takes the
metric names out of them, and looks each one up in the scrape. A name is found when

- a sample of that name is in the scrape, or
- a `# TYPE` line declares its family, by the exposition's suffix rules: a counter `F` is queried
  as `F_total`, a histogram `F` as `F_bucket`, `F_sum` and `F_count`, a summary `F` as `F`,
  `F_sum` and `F_count`, a gauge or untyped `F` as `F` (so a family declared with no sample yet
  counts), or
- it is in `ALLOWED` below: series that appear only after their first event, and series being
  added that this scrape may predate. Those absent from the scrape are listed as notes.

It prints the names it could not find and exits 1, or exits 0 when every name was found. A file
it cannot read exits 2. Only the standard library is used.
"""

import json
import re
import sys

# Names the dashboard may query although a scrape lacks them, and why.
ALLOWED = {
    # prometheus-client leaves out a labelled family until it has a first series: these appear
    # with the first request to a backend hook, and never when no hook is configured.
    "herald_hook_requests_total": "appears with the first hook request",
    "herald_hook_duration_seconds_bucket": "appears with the first hook request",
    "herald_hook_duration_seconds_sum": "appears with the first hook request",
    "herald_hook_duration_seconds_count": "appears with the first hook request",
    # Webhooks: series being added to Herald.
    "herald_webhook_events_total": "webhook series",
    "herald_webhook_events_dropped_total": "webhook series",
    "herald_webhook_requests_total": "webhook series",
    "herald_webhook_queue_events": "webhook series",
    "herald_webhook_duration_seconds_bucket": "webhook series",
    "herald_webhook_duration_seconds_sum": "webhook series",
    "herald_webhook_duration_seconds_count": "webhook series",
}

# The sample names each family type exports, as suffixes of the family name.
SUFFIXES = {
    "counter": ["_total", "_created"],
    "histogram": ["_bucket", "_sum", "_count", "_created"],
    "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
    "summary": ["", "_sum", "_count", "_created"],
    "gauge": [""],
    "untyped": [""],
    "unknown": [""],
    "info": ["_info"],
    "stateset": [""],
}

# Words of PromQL that look like names but are not metrics.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan",
}

NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{|\s)")
TYPE = re.compile(r"^#\s+TYPE\s+([A-Za-z_:][A-Za-z0-9_:]*)\s+(\w+)")
LABEL_VALUES = re.compile(r"label_values\s*\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def expressions(dashboard):
    """Every PromQL expression in the dashboard: targets of every panel, then variables."""
    found = []

    def panels(items):
        for panel in items or []:
            for target in panel.get("targets") or []:
                if isinstance(target.get("expr"), str):
                    found.append(target["expr"])
            panels(panel.get("panels"))

    panels(dashboard.get("panels"))
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if not isinstance(query, str):
            continue
        # label_values(selector, label) queries the selector; label_values(label) and the
        # other variable functions without a selector name no metric.
        match = LABEL_VALUES.search(query.strip())
        if match:
            found.append(match.group(1))
        elif not query.strip().startswith(("label_values", "label_names", "metrics")):
            found.append(query)
    return found


def metric_names(expr):
    """The metric names an expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*", " ", text)  # Grafana variables
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in NAME.finditer(text):
        name = match.group(0)
        before = text[: match.start()]
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # the exponent of a number such as 1e3
        if re.match(r"\s*\(", text[match.end():]):
            continue  # a function
        if name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def exported(scrape):
    """The sample names a scrape holds, with those its `# TYPE` lines declare."""
    names = set()
    for line in scrape.splitlines():
        line = line.strip()
        typed = TYPE.match(line)
        if typed:
            family, kind = typed.group(1), typed.group(2).lower()
            names.update(family + suffix for suffix in SUFFIXES.get(kind, [""]))
            continue
        if line.startswith("#") or not line:
            continue
        sample = SAMPLE.match(line)
        if sample:
            names.add(sample.group(1))
    return names


def main(argv):
    if len(argv) != 3:
        print("usage: check.py DASHBOARD.json METRICS.txt", file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as f:
            dashboard = json.load(f)
        with open(argv[2], encoding="utf-8") as f:
            scrape = f.read()
    except (OSError, ValueError) as e:
        print(f"check.py: {e}", file=sys.stderr)
        return 2

    used = set()
    for expr in expressions(dashboard):
        used |= metric_names(expr)
    if not used:
        print(f"{argv[1]}: no metric names found in the dashboard", file=sys.stderr)
        return 1
    have = exported(scrape)
    missing = sorted(name for name in used if name not in have and name not in ALLOWED)
    allowed = sorted(name for name in used if name not in have and name in ALLOWED)
    for name in allowed:
        print(f"note: {name} is not in {argv[2]} ({ALLOWED[name]}); allowed")
    if missing:
        print(f"{argv[1]} uses metrics that {argv[2]} does not export:")
        for name in missing:
            print(f"  {name}")
        return 1
    print(f"{argv[1]}: all {len(used)} metric names found ({len(allowed)} allowed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
