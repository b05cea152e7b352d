"""``python -m finetune.ui [--port 7860] [--runs runs]``: the web app on this machine (``make ui``).

It binds 127.0.0.1: only this machine can reach it. ``--host`` opens it to others and then needs ``--token``, which
the page's URL carries (``?token=...``) and every request sends.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional

from ..errors import add_verbose_flag, guarded
from ..serve import check_exposure, require_web


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--project", default=".", help="the folder with recipes/ and the data they name (default: .)")
    parser.add_argument("--runs", default="runs", help="the runs folder, relative to --project (default: runs)")
    parser.add_argument("--token", help="a secret every request must carry (required with a --host beyond loopback)")
    add_verbose_flag(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    def serve() -> int:
        require_web()
        check_exposure(args.host, args.token)
        import uvicorn

        from .app import create_app

        project = Path(args.project).resolve()
        # Recipes name their data relative to the project, as when launched from it: the dry run reads it from here.
        os.chdir(project)
        app = create_app(project, project / args.runs, args.token, args.host)
        query = f"?token={args.token}" if args.token else ""
        print(f"finetune web app: http://{args.host}:{args.port}/{query}  (Ctrl-C stops the app, not its runs)",
              flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        return 0

    return guarded(serve, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
