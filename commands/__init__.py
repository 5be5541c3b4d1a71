"""The command modules of the CLI (cli.py registers them). Commands stay thin: parse options,
call pipeline, render the result."""
