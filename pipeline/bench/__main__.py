import argparse

from pipeline.bench.cli import configure, main

parser = argparse.ArgumentParser(prog="python -m pipeline.bench")
configure(parser)
raise SystemExit(main(parser.parse_args()))
