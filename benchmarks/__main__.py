"""`python -m benchmarks pg19|locomo|recipes|cost|scale|serve|constrain|speed|suites ...` (from the checkout's root)."""

from benchmarks import main

raise SystemExit(main())
