"""Ferry: a Kubernetes-native bulk data mover (the `ferry` command and its operator)."""


def version() -> str:
    """The installed distribution's version; looked up only when asked (importlib.metadata
    costs ~20 ms of start-up)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _dist_version

    try:
        return _dist_version("ferry")
    except PackageNotFoundError:
        return "0+unknown"
