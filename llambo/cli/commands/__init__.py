"""One module per ``llambo`` command, each with ``run(args) -> int`` (``serve`` has ``serve(argv)``)."""
