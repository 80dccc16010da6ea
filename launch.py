#!/usr/bin/env python3
"""jaxlab launcher: python launch.py {run,sweep,grow,export,submit,compile,show,prepare,
report,fit,coordcheck,steplaw} ... (`python launch.py --help`; the commands are
jaxlab/launch/)."""
import sys

from jaxlab.launch.cli import main

if __name__ == '__main__':
  sys.exit(main())
