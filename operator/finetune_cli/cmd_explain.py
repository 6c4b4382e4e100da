"""``ftj explain FIELD``: one field of FineTuneJob, its type, default and description.

What ``kubectl explain ftj.spec.training`` shows from the CRD, without a cluster, read from
the same declarations as ``docs/reference.md`` (:func:`finetune_cli.cmd_docs.field_rows`), so
the three never disagree. The manifest loader's "unknown field" message points here.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap

EXIT_UNKNOWN = 2
_INDEX = re.compile(r"\[\d*\]")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``explain`` subcommand."""
    parser = sub.add_parser(
        "explain",
        help="describe a FineTuneJob field: type, default, allowed values, description",
        description=(
            "Describe one field of a FineTuneJob (e.g. spec.training.cutoffLength, "
            "spec.datasets[0].columns) and list the fields under it."
        ),
    )
    parser.add_argument(
        "field", nargs="?", default="spec", metavar="FIELD", help="dotted path (default: spec)"
    )
    parser.set_defaults(handler=run)


def _normalized(path: str) -> str:
    """``ftj.spec.datasets[0].uri`` → ``spec.datasets.uri``: the form paths are compared in."""
    path = _INDEX.sub("", path.strip().strip("`"))
    for prefix in ("finetunejob.", "finetunejobs.", "ftj."):
        if path.lower().startswith(prefix):
            path = path[len(prefix) :]
    if path not in ("spec", "status") and not path.startswith(("spec.", "status.")):
        path = f"spec.{path}"
    return path


def _plain(cell: str) -> str:
    """A Markdown table cell as text."""
    return cell.replace("`", "").replace("\\|", "|")


def run(args: argparse.Namespace) -> int:
    """Print the field and its direct sub-fields; a close match when it doesn't exist."""
    from finetune_cli.cmd_docs import field_rows

    rows = {_normalized(_plain(r[0])): [_plain(c) for c in r] for r in field_rows()}
    wanted = _normalized(args.field)
    children = [
        row for path, row in rows.items() if path.rpartition(".")[0] == wanted and path != wanted
    ]
    row = rows.get(wanted)
    if row is None and not children:
        guess = difflib.get_close_matches(wanted, list(rows), n=1, cutoff=0.6)
        hint = f" Did you mean {guess[0]}?" if guess else ""
        print(
            f"ftj explain: {args.field} is not a FineTuneJob field.{hint} "
            "`ftj explain spec` lists the top-level fields.",
            file=sys.stderr,
        )
        return EXIT_UNKNOWN
    if row is not None:
        path, kind, default, allowed, description = row
        print(f"FIELD:    {path}")
        print(f"TYPE:     {kind}")
        if default:
            print(f"DEFAULT:  {default}")
        if allowed:
            print(f"ALLOWED:  {allowed}")
        print("\nDESCRIPTION:")
        print(textwrap.indent(textwrap.fill(description or "(none)", 76), "    "))
    else:
        print(f"FIELD:    {wanted}")
    if children:
        print("\nFIELDS:")
        width = max(len(c[0].rpartition(".")[2]) for c in children)
        for child in children:
            name = child[0].rpartition(".")[2]
            summary = child[4].split(". ")[0].rstrip(".")
            print(f"    {name:<{width}}  <{child[1]}>  {summary}")
    return 0
