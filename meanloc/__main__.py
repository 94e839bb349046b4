from meanloc.cli import main

raise SystemExit(main())
