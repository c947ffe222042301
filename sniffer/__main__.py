"""`python -m sniffer` is the `moesif-sniffer` command."""

from sniffer.cli import main

raise SystemExit(main())
