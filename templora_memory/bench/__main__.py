"""`python -m templora_memory.bench pg19|locomo|cost ...`."""

from templora_memory.bench import main

raise SystemExit(main())
