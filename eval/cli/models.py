"""`lowbit models list|pull`: the known real models."""
from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser("models", help="list or pull the known real models")
    s.add_argument("action", choices=["list", "pull"])
    s.add_argument("names", nargs="*", help="models to pull (default: all)")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=run)


def run(args) -> int:
    from ..model_store import KNOWN_MODELS, cached_path, pull

    if args.action == "list":
        for name, spec in KNOWN_MODELS.items():
            path = cached_path(name)
            state = str(path) if path.exists() else "not pulled"
            print(f"{name:<16} {spec.description:<48} {state}")
        return 0
    for name in args.names or list(KNOWN_MODELS):
        print(pull(name, progress=not args.quiet))
    return 0
