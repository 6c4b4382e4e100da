"""``python -m finetune_operator``: the operator's single entry point.

The operator talks to the API through kopf and its own aiohttp client
(:mod:`finetune_operator.kube`), never through the official ``kubernetes`` package. kopf
imports that package whenever it is installed (only to recognize its model objects, which the
operator never passes), and importing it costs ~40 MB of memory, a quarter of the operator's
budget at a thousand jobs; so it is kept out of this process even where it is installed (a
development environment: the CLI and the tests use it).
"""

import sys

sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # import -> ImportError

from finetune_operator.main import main  # noqa: E402

if __name__ == "__main__":
    main()
